"""After a build: sign the image (cosign's layout) and attach its attestations (SLSA
provenance from the build record, a model-signing bundle from the file index).

Only small documents are read and written here; the weights are not read again.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from cryptography.hazmat.primitives.asymmetric import ec

from modelcar.builder.build import BuildOptions
from modelcar.builder.sources.base import Selection, Source, source_annotations
from modelcar.contract.build import BuildRecord
from modelcar.format import keys as mk
from modelcar.format.fileindex import FileIndex
from modelcar.format.image import load_model_image
from modelcar.oci.reference import Ref
from modelcar.oci.stores import open_store
from modelcar.trust import attest, cosign, provenance


def builder_version() -> str:
    try:
        return version("modelcar")
    except PackageNotFoundError:
        return "unknown"


def facts_of(
    record: BuildRecord,
    source: Source,
    selection: Selection,
    options: BuildOptions,
    image_index: FileIndex,
) -> provenance.BuildFacts:
    objects = source.provenance()
    return provenance.BuildFacts(
        source=record.source,
        index=image_index,
        builder_version=builder_version(),
        started=record.started,
        finished=record.finished,
        run_id=source_annotations(source).get(mk.SOURCE_RUN_ID),
        objects=objects or {},
        base=record.base,
        base_digest=record.base_digest,
        include=list(selection.include),
        exclude=list(selection.exclude),
        platforms=record.platforms,
        options={
            "largeFileThreshold": options.large_file_threshold,
            "maxLayers": options.max_layers,
            "maxLayerSize": options.max_layer_size,
        },
    )


def sign_build(
    target: Ref,
    record: BuildRecord,
    key: ec.EllipticCurvePrivateKey,
    source: Source,
    selection: Selection,
    options: BuildOptions,
) -> tuple[cosign.Signature, list[str]]:
    """Sign ``record``'s image and attach its attestations: the signature, and the
    predicate types attached."""
    store = open_store(target, options.store)
    pinned = target.pinned(record.digest)
    image = load_model_image(store, pinned)
    signature = cosign.sign_image(store, target, record.digest, key)
    facts = facts_of(record, source, selection, options, image.index)
    subject = attest.subject_of(store, record.digest)
    return signature, attest.attach(store, target, subject, key, image.index, facts)
