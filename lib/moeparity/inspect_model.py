"""`moeparity inspect`: what a GGUF file holds, from the header alone."""
from __future__ import annotations

from .gguf_model import ROLES, Model

MAP_ROLES = [r for r in ROLES if r != "ffn_norm"]


def summary(m: Model) -> dict:
    qmap = m.qtype_map()
    changed = []
    for i, row in enumerate(qmap):
        prev = qmap[i - 1] if i else None
        changed.append(sorted(r for r in row if prev is not None and prev.get(r) != row[r]))
    return {
        "path": m.path,
        "architecture": m.arch.name,
        "file_size": m.file_size,
        "n_tensors": len(m.tensors),
        "hparams": m.hparams.as_dict(),
        "qtypes": m.qtype_totals(),
        "layers": [{"layer": i, "qtypes": row, "changed_from_previous": changed[i]}
                   for i, row in enumerate(qmap)],
    }


def _gb(n):
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def render(s: dict) -> str:
    h = s["hparams"]
    lines = [f"{s['path']}: {s['architecture']}, {_gb(s['file_size'])}, {s['n_tensors']} tensors",
             "hparams: " + ", ".join(f"{k}={v}" for k, v in h.items() if k != "arch"), "", "qtypes:"]
    for q, d in sorted(s["qtypes"].items(), key=lambda kv: -kv[1]["bytes"]):
        lines.append(f"  {q:7s} {d['tensors']:5d} tensors  {_gb(d['bytes']):>11s}")
    roles = [r for r in MAP_ROLES if any(r in L["qtypes"] for L in s["layers"])]
    lines += ["", "qtype map (* = differs from the previous layer):",
              "  layer " + " ".join(f"{r:>14s}" for r in roles)]
    for L in s["layers"]:
        cells = []
        for r in roles:
            q = L["qtypes"].get(r, "-")
            cells.append(f"{q + ('*' if r in L['changed_from_previous'] else ' '):>14s}")
        lines.append(f"  {L['layer']:5d} " + " ".join(cells))
    return "\n".join(lines)
