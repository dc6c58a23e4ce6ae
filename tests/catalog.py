"""Moved to ``rfwatch.testing.catalog`` (public, for plugin authors too). This alias keeps
``from catalog import ...`` in the tests working: it is the same module object, not a copy."""

import sys

from rfwatch.testing import catalog as _module

sys.modules[__name__] = _module
