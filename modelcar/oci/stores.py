"""Open the store a reference names: a registry repository or an OCI layout directory.

Kept apart from the :class:`~modelcar.oci.store.ImageStore` interface, so the two
implementations import the interface and only this module imports them.
"""

from __future__ import annotations

from modelcar.oci.layout import OCILayout
from modelcar.oci.reference import ImageRef, LayoutRef, Ref
from modelcar.oci.registry.client import Repository
from modelcar.oci.store import ImageStore, StoreOptions


def open_store(
    ref: Ref, options: StoreOptions | None = None, *, create: bool = False
) -> ImageStore:
    options = options or StoreOptions()
    if isinstance(ref, LayoutRef):
        return OCILayout(ref, create=create)
    assert isinstance(ref, ImageRef)
    return Repository(ref, options)
