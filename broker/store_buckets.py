"""The buckets task pods write (progress, checkpoints, artifacts) and the dead letters' originals,
created idempotently by ``Store.open``; split from broker/store.py to keep it small."""

from __future__ import annotations

import contextlib

import nats.js.errors
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from broker import contract


async def ensure_kv(js: JetStreamContext, config: api.KeyValueConfig) -> KeyValue:
    try:
        return await js.create_key_value(config)
    except nats.js.errors.BadRequestError:
        return await js.key_value(config.bucket)


async def ensure_output_buckets(js: JetStreamContext, *, replicas: int, storage: api.StorageType) -> None:
    age = contract.PROGRESS_MAX_AGE_S  # task pods' progress, history 1 (docs/design/progress.md)
    await ensure_kv(
        js,
        api.KeyValueConfig(bucket=contract.BUCKET_PROGRESS, ttl=age, replicas=replicas, storage=storage,
                           max_value_size=contract.PROGRESS_MAX_VALUE_BYTES),
    )
    # Each job's checkpoint pointer, changed by compare-and-set only (docs/design/checkpoints.md).
    await ensure_kv(
        js,
        api.KeyValueConfig(bucket=contract.BUCKET_CHECKPOINTS, history=1, replicas=replicas, storage=storage),
    )
    with contextlib.suppress(nats.js.errors.BadRequestError):
        await js.create_object_store(
            contract.OBJECT_STORE_ARTIFACTS,
            config=api.ObjectStoreConfig(
                bucket=contract.OBJECT_STORE_ARTIFACTS, replicas=replicas, storage=storage
            ),
        )
    with contextlib.suppress(nats.js.errors.BadRequestError):
        await js.create_object_store(
            contract.OBJECT_STORE_DEAD,
            config=api.ObjectStoreConfig(
                bucket=contract.OBJECT_STORE_DEAD, replicas=replicas, storage=storage, ttl=30 * 86400
            ),
        )
