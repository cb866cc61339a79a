"""Per-layer streaming of expert bytes to the GPU: only the experts a layer selects are uploaded,
straight from the memory-mapped file, and at most two layers are resident — the one computing and
the one being prefetched (double buffering). A prefetch runs in a worker thread (host copy into
pinned memory, then an async copy on its own stream); the compute stream waits on its event.
"""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import DeviceOutOfMemory

_LAYER_RE = re.compile(r"^blk\.(\d+)\.")
RESIDENT_LAYERS = 2
SLACK = 16      # the kernels copy 16-byte-aligned spans, up to 15 bytes past a row's end


def layer_of(tensor):
    m = _LAYER_RE.match(tensor.name)
    return int(m.group(1)) if m else None


class ExpertUploader:
    def __init__(self, cp):
        self.cp = cp
        self.device = cp.cuda.Device().id
        self.entries: dict = {}          # key → (layer, upload or future)
        self.last_prefetched = None      # the layer that computes next
        self.pool = None
        self.stream = None
        self.uploaded_bytes = 0
        self.prefetch_hits = 0

    @staticmethod
    def key(tensor, experts):
        return (id(tensor._mm), tensor.offset, tensor.type_id, tuple(int(e) for e in experts))

    def _keep(self, *layers):
        """Drop every resident layer but these (at most RESIDENT_LAYERS: computing + next)."""
        keep = {x for x in layers if x is not None}
        assert len(keep) <= RESIDENT_LAYERS
        self.entries = {k: v for k, v in self.entries.items() if v[0] in keep}

    @property
    def resident_layers(self) -> set:
        return {v[0] for v in self.entries.values()}

    def _oom(self, tensor, nbytes, doing="uploading"):
        free, total = self.cp.cuda.runtime.memGetInfo()
        return DeviceOutOfMemory(f"GPU out of memory {doing} {tensor.name} (layer {layer_of(tensor)}): "
                                 f"{nbytes} bytes asked, {free} of {total} free")

    def _upload(self, tensor, experts, stream=None):
        """(device array, event or None, pinned host buffer or None); raises DeviceOutOfMemory."""
        cp = self.cp
        nbytes = len(experts) * tensor.expert_bytes
        shape = (len(experts), tensor.n_out, tensor.row_bytes)
        try:
            dev = cp.empty(nbytes + SLACK, cp.uint8)[:nbytes].reshape(shape)
            if stream is None:
                for j, e in enumerate(experts):
                    dev[j].set(np.ascontiguousarray(tensor.expert(int(e))))
                return dev, None, None
            host_mem = cp.cuda.alloc_pinned_memory(nbytes)
            host = np.frombuffer(host_mem, np.uint8, nbytes).reshape(shape)
            for j, e in enumerate(experts):
                host[j] = tensor.expert(int(e))
            dev.set(host, stream=stream)
            return dev, stream.record(), host_mem
        except cp.cuda.memory.OutOfMemoryError:
            raise self._oom(tensor, nbytes) from None

    def get(self, tensor, experts):
        layer = layer_of(tensor)
        if layer is None:                                   # in-memory tensors: never cached
            return self._upload(tensor, experts)[0]
        self._keep(layer, self.last_prefetched)          # this layer computes; the prefetched one is next
        k = self.key(tensor, experts)
        hit = self.entries.get(k)
        if hit is not None:
            dev, event = (hit[1].result() if hasattr(hit[1], "result") else hit[1])[:2]
            if event is not None:
                self.cp.cuda.get_current_stream().wait_event(event)
                self.prefetch_hits += 1
            return dev
        entry = self._upload(tensor, experts)
        self.uploaded_bytes += len(experts) * tensor.expert_bytes
        self.entries[k] = (layer, entry + (tensor._mm,))    # hold the buffer so its id stays unique
        return entry[0]

    def prefetch(self, tensor, experts):
        """Start uploading in the background; a later get() of the same experts waits on it."""
        layer = layer_of(tensor)
        k = self.key(tensor, experts)
        if layer is None or k in self.entries:
            return
        if layer != self.last_prefetched:              # the previous prefetch computes next; older go
            self._keep(layer, self.last_prefetched)
            self.last_prefetched = layer
        if self.pool is None:
            self.pool = ThreadPoolExecutor(1, thread_name_prefix="moeparity-upload")
            self.stream = self.cp.cuda.Stream(non_blocking=True)

        def job():
            with self.cp.cuda.Device(self.device):
                return self._upload(tensor, experts, self.stream)
        self.uploaded_bytes += len(experts) * tensor.expert_bytes
        self.entries[k] = (layer, self.pool.submit(job))
