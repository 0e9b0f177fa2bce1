"""A model folder written as a GGUF file (llama.cpp's format) with the `gguf` package's writer and NumPy
quantizers: no llama.cpp build is needed.

Two routes:

- **From a source GGUF** (a model that came from one, such as the embedded default): the source file's
  metadata and tokenizer are kept, key for key, and each of its tensors is replaced by the folder's
  weights, so llama.cpp reads the result exactly as it read the source. The source must describe the same
  model (architecture, layers, width and vocabulary).
- **Built** (any other folder): the metadata come from the folder's `config.json` and its byte-level BPE
  `tokenizer.json` (tokens, types, merges, special ids, chat template). Only the Llama architecture
  (`model_type: llama`: SmolLM2, Llama 2/3, TinyLlama) is built; a SentencePiece tokenizer, or another
  architecture such as Gemma 3, needs a source GGUF of the same model.

Tensor layout follows llama.cpp's converter (`convert_hf_to_gguf.py`): GGUF names from the `gguf` package's
tensor map, Llama's query and key projections permuted back to llama.cpp's rotary layout (the transformers
GGUF reader undoes it on load), norms kept in F32, and a tied output head written once, as the token
embedding. A weight whose rows do not split into the type's blocks (32 values for the types here) is
written in F16 instead, and counted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from whoharry.config.choices import GGUFType
from whoharry.core import artifacts
from whoharry.errors import WhoharryError

log = logging.getLogger(__name__)

# the GGML tensor type and llama.cpp file type of each export type (names as llama.cpp's quantize tool spells them)
TYPES = {"f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"), "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
         "q5_0": ("Q5_0", "MOSTLY_Q5_0"), "q5_1": ("Q5_1", "MOSTLY_Q5_1"), "q4_0": ("Q4_0", "MOSTLY_Q4_0"),
         "q4_1": ("Q4_1", "MOSTLY_Q4_1")}
# the text `check_logits` reads by default: plain general prose, so the check needs no data file
CHECK_TEXT = ("The river runs past the old mill and on to the sea. In spring the farmers of the valley sow wheat "
              "and barley, and by autumn the market square is full of apples, pears and fresh bread. Children "
              "walk to the school on the hill, where they learn to read, to count and to name the stars. In the "
              "evening the lamps are lit along the harbour, and the fishing boats come home with the tide.")
# metadata the writer sets itself, or that names the source's own quantization
_OWN_KEYS = ("GGUF.", "general.file_type", "general.quantization_version")


@dataclass
class Exported:
    """What `export_gguf` wrote."""

    path: Path
    gguf_type: str
    route: str  # "source" (metadata and tokenizer kept from a GGUF) or "built"
    tensors: int
    fallback_f16: list[str] = field(default_factory=list)  # weights whose rows do not split into blocks
    bytes: int = 0


def ggml_type(gguf_type: str) -> Any:
    """The `gguf.GGMLQuantizationType` of an export type."""
    import gguf

    return gguf.GGMLQuantizationType[TYPES[gguf_type][0]]


def _permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Llama's query/key rows from the transformers rotary layout (halves) to llama.cpp's (interleaved
    pairs), as llama.cpp's converter does; shape `[heads * head_dim, hidden]` kept."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def gguf_tensors(state: dict[str, Any], config: Any) -> Iterator[tuple[str, np.ndarray]]:
    """The folder's weights as `(GGUF name, float32 array)`, in state-dict order: names mapped by the `gguf`
    package's Llama tensor map, query/key permuted, a tied `lm_head` left out, rotary buffers skipped.

    Raises:
        WhoharryError: a weight the map has no GGUF name for.
    """
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    for name, tensor in state.items():
        if name.endswith("rotary_emb.inv_freq") or (name == "lm_head.weight" and config.tie_word_embeddings):
            continue
        mapped = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise WhoharryError(f"export: no GGUF name for the weight {name}")
        array = tensor.detach().to("cpu").float().numpy()
        if name.endswith("q_proj.weight"):
            array = _permute(array, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            array = _permute(array, kv_heads)
        yield mapped, array


def encode(array: np.ndarray, gguf_type: str, name: str, fallback: list[str]) -> tuple[np.ndarray, Any]:
    """One tensor in the export type: `(data, GGML type)`. 1-D tensors (norms, biases) stay F32, as in
    llama.cpp's converter; a weight whose rows do not split into the type's blocks is written in F16 (its
    name appended to `fallback`)."""
    import gguf
    from gguf import quants

    qtype = ggml_type(gguf_type)
    if array.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
        return array.astype(np.float32), gguf.GGMLQuantizationType.F32
    if qtype == gguf.GGMLQuantizationType.F16:
        return array.astype(np.float16), qtype
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if array.shape[-1] % block:
        fallback.append(name)
        return array.astype(np.float16), gguf.GGMLQuantizationType.F16
    return quants.quantize(array.astype(np.float32), qtype), qtype


def _source_metadata(source: Path, config: Any) -> tuple[list[tuple[str, Any, list[Any]]], list[str]]:
    """The source GGUF's metadata `(key, value, types)` without the writer's own keys, and its tensor names.

    Raises:
        WhoharryError: a source that is not a Llama GGUF of the folder's model (layers, width, vocabulary).
    """
    from gguf import GGUFReader

    reader = GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    expected = {f"{arch}.block_count": config.num_hidden_layers, f"{arch}.embedding_length": config.hidden_size}
    found = {key: reader.fields[key].contents() for key in expected if key in reader.fields}
    tokens = len(reader.fields["tokenizer.ggml.tokens"].data) if "tokenizer.ggml.tokens" in reader.fields else None
    if arch != "llama" or found != expected or tokens not in (None, config.vocab_size):
        raise WhoharryError(f"export: the source GGUF {source} is not the folder's model ({arch}, {found}, "
                            f"{tokens} tokens; the folder: llama, {expected}, {config.vocab_size} tokens)")
    metadata = [(key, fld.contents(), list(fld.types)) for key, fld in reader.fields.items()
                if not key.startswith(_OWN_KEYS)]
    return metadata, [tensor.name for tensor in reader.tensors]


def _built_metadata(folder: Path, config: Any) -> list[tuple[str, Any, list[Any]]]:
    """Llama metadata and a byte-level BPE tokenizer from the folder's config.json and tokenizer.json.

    Raises:
        WhoharryError: another architecture, or a tokenizer that is not byte-level BPE.
    """
    import gguf

    if config.model_type != "llama":
        raise WhoharryError(f"export: a {config.model_type} model needs a source GGUF of the same model "
                            "(--source); without one only the Llama architecture is built")
    path = folder / "tokenizer.json"
    tokenizer = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(tokenizer.get("pre_tokenizer")):
        raise WhoharryError(f"export: {folder} has no byte-level BPE tokenizer.json; a SentencePiece tokenizer "
                            "needs a source GGUF of the same model (--source)")
    V = gguf.GGUFValueType
    vocab = {**model["vocab"], **{t["content"]: t["id"] for t in tokenizer.get("added_tokens", [])}}
    size = max(config.vocab_size, max(vocab.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [int(gguf.TokenType.UNUSED)] * size
    for text, index in vocab.items():
        tokens[index], types[index] = text, int(gguf.TokenType.NORMAL)
    for added in tokenizer.get("added_tokens", []):
        types[added["id"]] = int(gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    out: list[tuple[str, Any, list[Any]]] = [
        ("general.architecture", "llama", [V.STRING]), ("general.name", folder.name, [V.STRING]),
        ("llama.context_length", config.max_position_embeddings, [V.UINT32]),
        ("llama.embedding_length", config.hidden_size, [V.UINT32]),
        ("llama.block_count", config.num_hidden_layers, [V.UINT32]),
        ("llama.feed_forward_length", config.intermediate_size, [V.UINT32]),
        ("llama.attention.head_count", heads, [V.UINT32]),
        ("llama.attention.head_count_kv", getattr(config, "num_key_value_heads", None) or heads, [V.UINT32]),
        ("llama.rope.freq_base", float(getattr(config, "rope_theta", 10000.0)), [V.FLOAT32]),
        ("llama.attention.layer_norm_rms_epsilon", float(config.rms_norm_eps), [V.FLOAT32]),
        ("llama.rope.dimension_count", head_dim, [V.UINT32]),
        ("llama.vocab_size", size, [V.UINT32]),
        ("tokenizer.ggml.model", "gpt2", [V.STRING]), ("tokenizer.ggml.pre", "default", [V.STRING]),
        ("tokenizer.ggml.tokens", tokens, [V.ARRAY, V.STRING]),
        ("tokenizer.ggml.token_type", types, [V.ARRAY, V.INT32]),
        ("tokenizer.ggml.merges", merges, [V.ARRAY, V.STRING]),
    ]
    special = _special_ids(folder, vocab, config)
    out += [(f"tokenizer.ggml.{name}_token_id", index, [V.UINT32]) for name, index in special.items()]
    settings = artifacts.read_json_object(folder / "tokenizer_config.json") or {}
    if isinstance(settings.get("chat_template"), str):
        out.append(("tokenizer.chat_template", settings["chat_template"], [V.STRING]))
    return out


def _special_ids(folder: Path, vocab: dict[str, int], config: Any) -> dict[str, int]:
    """bos, eos, unknown and padding ids: from the tokenizer's settings, else from config.json."""
    settings = {**(artifacts.read_json_object(folder / "special_tokens_map.json") or {}),
                **(artifacts.read_json_object(folder / "tokenizer_config.json") or {})}
    ids = {}
    for name, key in (("bos", "bos_token"), ("eos", "eos_token"), ("unknown", "unk_token"), ("padding", "pad_token")):
        token = settings.get(key)
        token = token.get("content") if isinstance(token, dict) else token
        if isinstance(token, str) and token in vocab:
            ids[name] = vocab[token]
        elif isinstance(getattr(config, f"{key}_id", None), int):
            ids[name] = getattr(config, f"{key}_id")
    return ids


def export_gguf(folder: Path, out: Path, gguf_type: GGUFType, source: Path | None = None, *,
                progress: bool = False) -> Exported:
    """Write the save_pretrained model `folder` as the GGUF file `out` in `gguf_type` (see the module's
    routes), atomically; `progress` shows a bar over the tensors as they are converted and written.

    Raises:
        WhoharryError: an unknown type, a folder that is not a model, a source GGUF of another model, an
            architecture or tokenizer that cannot be built, or a weight without a GGUF name.
    """
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    if gguf_type not in TYPES:
        raise WhoharryError(f"export: unknown type {gguf_type!r}; choose one of {', '.join(TYPES)}")
    if not (folder / "config.json").is_file():
        raise WhoharryError(f"export: {folder} is not a model folder (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    config = model.config
    if source is not None:
        metadata, wanted = _source_metadata(source, config)
    else:
        metadata, wanted = _built_metadata(folder, config), None
    arrays = dict(gguf_tensors(model.state_dict(), config))
    del model
    if wanted is not None:
        missing = [name for name in wanted if name not in arrays]
        if missing:
            raise WhoharryError(f"export: the folder has no weight for the source's tensor(s) {', '.join(missing[:3])}")
        arrays = {name: arrays[name] for name in wanted}  # the source's tensors, in its order
    fallback: list[str] = []
    with artifacts.atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(tmp, "llama")
        for key, value, types in metadata:
            if key == "general.architecture":
                continue  # the writer writes it
            writer.add_key_value(key, value, types[0], sub_type=types[1] if len(types) > 1 else None)
        writer.add_file_type(int(gguf.LlamaFileType[TYPES[gguf_type][1]]))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for name, array in tqdm(arrays.items(), desc=f"export: {gguf_type}", unit="tensor", leave=False,
                                disable=not progress):
            data, qtype = encode(array, gguf_type, name, fallback)
            writer.add_tensor(name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=progress)
        writer.close()
    if fallback:
        log.warning("export: %d weight(s) written in F16, their rows not splitting into %s blocks: %s",
                    len(fallback), gguf_type, ", ".join(fallback[:3]))
    return Exported(out, gguf_type, "source" if source is not None else "built", len(arrays), fallback,
                    out.stat().st_size)


def check_logits(folder: Path, path: Path, text: str, max_tokens: int = 128) -> dict[str, float]:
    """How closely the GGUF file `path`, read back through transformers (`gguf_file=`, dequantised to
    float32), reproduces the folder's next-token logits on the first `max_tokens` tokens of `text`.

    Returns:
        `tokens`; `max_abs_logit_diff` (logit units); `top1_agreement` (share of positions whose argmax
        agrees); `mean_kl` (nats per position, KL(folder ‖ file)).

    Raises:
        WhoharryError: a text of fewer than 2 tokens. Whatever transformers raises for a file it cannot read.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[:, :max_tokens]
    if ids.shape[1] < 2:
        raise WhoharryError("export check: the text holds fewer than 2 tokens")
    logits = []
    for load in (lambda: AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32),
                 lambda: AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)):
        model = load().eval()
        with torch.no_grad():
            logits.append(model(input_ids=ids).logits[0].float())
        del model
    ours, theirs = logits
    kl = torch.nn.functional.kl_div(theirs.log_softmax(-1), ours.log_softmax(-1), log_target=True,
                                    reduction="none").sum(-1)
    return {"tokens": int(ids.shape[1]), "max_abs_logit_diff": float((ours - theirs).abs().max()),
            "top1_agreement": float((ours.argmax(-1) == theirs.argmax(-1)).float().mean()),
            "mean_kl": max(0.0, float(kl.mean()))}  # rounding can leave an identical pair a hair below 0
