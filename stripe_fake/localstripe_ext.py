"""localstripe, imported once and kept off the disk.

Every module of this package that needs localstripe imports it from here, so
the patch below always runs before anything touches localstripe's store.
localstripe is GPL-3.0-or-later; it is only ever imported by this package's
server (payworker's optional `fake` extra), never by the worker.
"""

from __future__ import annotations

from typing import Any

import localstripe.resources as res  # type: ignore[import-untyped,unused-ignore]
import localstripe.webhooks as webhooks  # type: ignore[import-untyped,unused-ignore]


def _no_disk(self: Any, *args: Any, **kwargs: Any) -> None:
    """Replacement for Store.dump_to_disk / Store.try_load_from_disk."""


# Must happen before anything writes to the store: Store.__setitem__ and
# __delitem__ pickle the whole store to /tmp/localstripe.pickle on *every*
# write (slow, and shared between runs/processes). Patching the class covers
# the module-level `store` instance too. We also never load an old pickle.
res.Store.dump_to_disk = _no_disk
res.Store.try_load_from_disk = _no_disk

# Imported only after the patch: importing the server builds localstripe's
# global app, whose save_store_middleware would otherwise dump too (we do not
# reuse that middleware anyway).
import localstripe.server as server  # type: ignore[import-untyped,unused-ignore]  # noqa: E402

__all__ = ["res", "server", "webhooks"]
