"""Every setting has a one-line description for the docs, and nothing else has one.

The settings page (``docs/settings.rst``) is generated from ``_SPECS`` (name, default,
validator) and ``pika_rpc._setting_docs.DESCRIPTIONS``; a setting added to one and not the
other fails here, not in the docs build. (Where a spec carries its own one-line ``doc``, that
line stands in for a missing entry of ``DESCRIPTIONS``.)
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Any, Dict

from pika_rpc._setting_docs import DESCRIPTIONS

PACKAGE = Path(__file__).resolve().parents[2] / 'pika_rpc'


def specs() -> Dict[str, Any]:
    """``_SPECS`` from ``pika_rpc.config``, or from whichever module of the package assigns
    it at module level (config may be split)."""
    config = importlib.import_module('pika_rpc.config')
    if hasattr(config, '_SPECS'):
        return config._SPECS
    for path in sorted(PACKAGE.glob('*.py')):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            targets = getattr(node, 'targets', None) or [getattr(node, 'target', None)]
            if any(getattr(t, 'id', None) == '_SPECS' for t in targets):
                return importlib.import_module(f'pika_rpc.{path.stem}')._SPECS
    raise AssertionError('no module of pika_rpc defines _SPECS')


def test_every_setting_has_a_description_and_only_settings_have_one() -> None:
    table = specs()
    names = set(table)
    # A settings table whose specs carry their own line (a ``doc``) covers those settings.
    missing = sorted(n for n in names - set(DESCRIPTIONS) if not getattr(table[n], 'doc', None))
    extra = sorted(set(DESCRIPTIONS) - names)
    assert not missing, f'settings without a line in pika_rpc/_setting_docs.py: {missing}'
    assert not extra, f'lines in pika_rpc/_setting_docs.py for no setting: {extra}'


def test_each_description_is_one_nonempty_line() -> None:
    for name, text in DESCRIPTIONS.items():
        assert isinstance(text, str) and text.strip(), name
        assert '\n' not in text, f'{name}: one line, please'
        assert text.rstrip().endswith('.'), f'{name}: a sentence ends with a full stop'


def test_the_settings_module_lists_at_least_the_settings_readme_names() -> None:
    for name in ('broker_url', 'result_expires', 'publish_timeout', 'direct_writes'):
        assert name in specs()
