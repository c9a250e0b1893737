"""Sphinx extension of pika_rpc's docs: the settings page, generated.

``.. pika-rpc-settings::`` renders every setting, alphabetically, as a ``.. setting::``
entry (name, default, one-line description) that other pages cite with
``:setting:`result_expires```. Names and defaults come from the one place that defines
them, the ``_SPECS`` table (``pika_rpc/_setting_specs.py``, re-exported by ``config``),
descriptions included: each spec's ``doc``. A setting without a description fails the
build (``tests/unit/test_setting_docs.py`` says the same earlier).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path
from typing import Any, Dict, List

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

PACKAGE = Path(__file__).resolve().parents[2] / 'pika_rpc'


def find_specs() -> Dict[str, Any]:
    """``_SPECS`` (name -> (default, validator)) from the module of pika_rpc that defines it.

    ``pika_rpc.config`` first; else the package's modules are read (not imported) to find
    the one that assigns ``_SPECS`` at module level, and that one is imported.
    """
    config = importlib.import_module('pika_rpc.config')
    if hasattr(config, '_SPECS'):
        return dict(config._SPECS)
    for path in sorted(PACKAGE.glob('*.py')):
        for node in ast.parse(path.read_text()).body:
            targets = getattr(node, 'targets', None) or [getattr(node, 'target', None)]
            if any(getattr(t, 'id', None) == '_SPECS' for t in targets):
                return dict(importlib.import_module(f'pika_rpc.{path.stem}')._SPECS)
    raise ExtensionError('pika_rpc_docs: no module of pika_rpc defines _SPECS')


def _default(value: Any) -> str:
    return f'``{value!r}``'


def descriptions(specs: Dict[str, Any]) -> Dict[str, str]:
    """Each setting's line: its spec's ``doc``. A setting without one is an error."""
    out = {n: getattr(spec, 'doc', None) or '' for n, spec in specs.items()}
    missing = sorted(n for n, text in out.items() if not text)
    if missing:
        raise ExtensionError(f'pika_rpc/_setting_specs.py: no description for {missing}')
    return out


def settings_rst() -> List[str]:
    """The settings as reStructuredText lines."""
    specs = find_specs()
    texts = descriptions(specs)
    lines: List[str] = []
    for name in sorted(specs):
        default = specs[name][0]
        lines += [
            f'.. setting:: {name}',
            '',
            f'   {texts[name]}',
            '',
            f'   Default: {_default(default)}',
            '',
        ]
    return lines


class SettingsDirective(SphinxDirective):
    """``.. pika-rpc-settings::``: every setting, generated."""

    has_content = False

    def run(self) -> list:
        content = StringList(settings_rst(), source='<pika-rpc-settings>')
        node = nodes.container()
        nested_parse_with_titles(self.state, content, node)
        return node.children


_SECTION = re.compile(r'^(?P<indent>\s*)(Args|Arguments|Raises|Returns|Yields|Attributes):\s*$')


def google_sections(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list) -> None:
    """The docstrings' ``Args:``/``Raises:``/``Returns:`` sections as bullet lists.

    They are written Google-style (an entry's text continues on more indented lines), which
    reStructuredText reads as broken definition lists. Each entry becomes one bullet, its
    continuation lines joined to it; nothing else of the docstring changes.
    """
    out: List[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        match = _SECTION.match(line)
        if not match:
            continue
        base = len(match.group('indent'))
        entries: List[str] = []
        entry_indent = None
        while i < len(lines):
            text = lines[i]
            if not text.strip():
                i += 1
                continue
            indent = len(text) - len(text.lstrip())
            if indent <= base:
                break
            if entry_indent is None or indent <= entry_indent:
                entry_indent = indent
                entries.append(text.strip())
            else:
                entries[-1] += ' ' + text.strip()
            i += 1
        out.extend(' ' * (base + 4) + '* ' + entry for entry in entries)
        out.append('')
    lines[:] = out


def skip_class_aliases(
    app: Sphinx, what: str, name: str, obj: Any, skip: bool, options: Any
) -> Any:
    """Skip a class attribute that only names a class defined elsewhere (kombu's
    ``Consumer.ContentDisallowed``): it is documented where it is defined."""
    if what == 'class' and inspect.isclass(obj) and obj.__qualname__ == obj.__name__:
        return True
    return None


def setup(app: Sphinx) -> Dict[str, Any]:
    app.connect('autodoc-process-docstring', google_sections)
    app.connect('autodoc-skip-member', skip_class_aliases)
    app.add_object_type('setting', 'setting', objname='setting', indextemplate='pair: %s; setting')
    app.add_directive('pika-rpc-settings', SettingsDirective)
    return {'version': '1', 'parallel_read_safe': True, 'parallel_write_safe': True}
