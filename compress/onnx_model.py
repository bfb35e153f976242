"""The pruned model run by ONNX Runtime: what a quantize stage with `engine: onnxruntime` writes.

The artifact holds `model.onnx` (the pruned forward, tokens really dropped, int8 linear layers;
`compress.onnx_runtime`), its batch-1 twin `model_b1.onnx` (absent from older artifacts),
`config.json`, the tokenizer, `pruning.json` and `quantization.json` (`"engine": "onnxruntime"`).
`OnnxModel` answers like a `PrunableModel` in drop mode (logits and per-layer token counts), so
evaluation, `bench` and the registered pyfunc model use it as they are.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from compress.errors import UserError
from compress.ltp import PrunedOutput, PruningSpec
from compress.onnx_runtime import GraphSessions, batch_one_path

ONNX_FILE = "model.onnx"


class OnnxModel:
    """An ONNX Runtime session over a pruned model's graph, with the config and spec it was made from."""

    device = torch.device("cpu")
    int8_attention = False  # the attention matmuls stay fp32 (LTP's importance needs them exact)

    def __init__(self, path: Path, config, spec: PruningSpec | None, scheme: str, threads: int = 0):
        self.path, self.config, self.spec, self.quantization = Path(path), config, spec, scheme
        self.sessions = GraphSessions(self.path, threads)  # threads 0: ONNX Runtime's default (all cores)

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    def eval(self) -> OnnxModel:
        return self

    def __call__(self, input_ids, attention_mask, token_type_ids=None, mode: str = "drop") -> PrunedOutput:
        if mode != "drop":
            raise ValueError(f"an ONNX Runtime model runs its graph as exported (drop), not mode {mode!r}")
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        logits, tokens_in, tokens_kept = self.sessions(self.sessions.feed(batch))
        return PrunedOutput(
            logits=logits,
            tokens_in=tokens_in,
            tokens_kept=tokens_kept,
            kept_fraction=(tokens_kept.sum() / attention_mask.sum()).float(),
            cls_hidden=logits.new_zeros((len(logits), 0)),  # not an output of the graph
        )

    def save(self, directory: Path) -> None:
        """model.onnx (and its batch-1 twin), config.json and pruning.json (quantization.json is the
        caller's)."""
        target = Path(directory) / ONNX_FILE
        shutil.copyfile(self.path, target)
        if batch_one_path(self.path).is_file():
            shutil.copyfile(batch_one_path(self.path), batch_one_path(target))
        self.config.save_pretrained(directory)
        if self.spec is not None:
            self.spec.save(directory)


def load_onnx_model(directory: Path, config, spec: PruningSpec | None, scheme: str) -> OnnxModel:
    """The artifact's graph in a session, checked: present, loadable, as many logits as the task has."""
    path = Path(directory) / ONNX_FILE
    if not path.is_file():
        raise UserError(
            f"{directory}: quantization.json names engine onnxruntime, but there is no {ONNX_FILE}"
        )
    model = OnnxModel(path, config, spec, scheme)  # a graph that does not load: one line naming it
    width = model.sessions.general.get_outputs()[0].shape[-1]
    if width != config.num_labels:
        raise UserError(f"{path}: the graph gives {width} logits, the task needs {config.num_labels}")
    return model
