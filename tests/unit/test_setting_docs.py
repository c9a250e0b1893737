"""Every setting has a one-line description for the docs, next to its definition.

The settings page (``docs/settings.rst``) is generated from ``_SPECS`` (name, default,
validator, description); a setting added without a description fails here, not in the docs
build.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Any, Dict

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


def test_every_setting_has_one_nonempty_line_ending_a_sentence() -> None:
    for name, spec in specs().items():
        text = getattr(spec, 'doc', None)
        assert isinstance(text, str) and text.strip(), f'{name}: no description'
        assert '\n' not in text, f'{name}: one line, please'
        assert text.rstrip().endswith('.'), f'{name}: a sentence ends with a full stop'


def test_the_settings_module_lists_at_least_the_settings_readme_names() -> None:
    for name in ('broker_url', 'result_expires', 'publish_timeout', 'direct_writes'):
        assert name in specs()
