"""Model + what trains, by backend: a small table. Unsloth (fast 4-bit kernels) when a CUDA GPU and
the package are there; otherwise transformers + peft (+ bitsandbytes 4-bit on CUDA); plain LoRA on
CPU. The finetuning setting picks peft's config (LoRA, prefix tuning, p-tuning) or none (full: every
weight trains). Every backend returns the model and its tokenizer, so the rest of the run is shared."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

from chat_runtime.errors import UserError
from chat_runtime.precision import bnb_config, pick_dtype_name
from chat_runtime.spec import require_safetensors

from .config import DTYPES, AdapterArgs, ModelArgs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Device:
    """Where training runs and in which precision."""

    kind: str  # "cuda" or "cpu"
    dtype: str  # the weights': float32 | float16 | bfloat16 (never bf16 on a T4: decided by compute capability)
    name: str
    compute: str = ""  # mixed precision's compute dtype where it differs from the weights' (bf16 autocast on CPU)

    @property
    def compute_dtype(self) -> str:
        return self.compute or self.dtype


def cpu_has_bf16() -> bool:
    """Native bf16 arithmetic (AVX512-BF16 or AMX): there bf16 autocast trains ~1.4x faster than fp32;
    elsewhere torch emulates it and it is slower."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own CPU-feature checks
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def detect_device(precision: str = "auto") -> Device:
    """The device and its precision. On a GPU the weights take the compute dtype (as before 4-bit
    quantization); on a CPU they stay fp32 and bf16 is autocast only, as trl's defaults do it."""
    import torch

    if torch.cuda.is_available():
        cap = torch.cuda.get_device_capability()
        name = f"{torch.cuda.get_device_name()} (sm_{cap[0]}{cap[1]})"
        if precision == "bf16" and cap < (8, 0):
            raise UserError(f"{name} has no bf16 (it needs compute capability 8.0+): use --precision auto or fp16")
        dtype = pick_dtype_name("cuda", cap) if precision == "auto" else DTYPES[precision]
        return Device("cuda", dtype, name)
    if precision == "fp16":
        raise UserError("fp16 training needs a CUDA GPU; on a CPU use --precision auto, bf16 or fp32")
    bf16 = precision == "bf16" or (precision == "auto" and cpu_has_bf16())
    return Device("cpu", "float32", "CPU, bf16 mixed precision" if bf16 else "CPU, fp32", "bfloat16" if bf16 else "")


UNSLOTH_FINETUNINGS = ("lora", "qlora")  # what load_unsloth builds; the rest runs on peft


def pick_backend(requested: str, device: Device, processes: int = 1, finetuning: str = "lora") -> str:
    """`auto` -> unsloth when CUDA and unsloth are available (and one process runs a LoRA), else peft."""
    if requested == "unsloth" and device.kind != "cuda":
        raise UserError("backend unsloth needs a CUDA GPU; use --backend peft (or auto) on this machine")
    if requested == "unsloth" and importlib.util.find_spec("unsloth") is None:
        raise UserError("backend unsloth is not installed: pip install -r requirements-gpu.txt, or use --backend peft")
    if requested != "auto":
        return requested
    single = processes == 1  # several processes: peft, the backend every strategy supports
    fits = single and finetuning in UNSLOTH_FINETUNINGS and device.kind == "cuda"
    return "unsloth" if fits and importlib.util.find_spec("unsloth") else "peft"


def lora_config(lora: AdapterArgs):
    """peft LoraConfig for a causal LM."""
    from peft import LoraConfig

    return LoraConfig(
        r=lora.lora_r,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        target_modules=list(lora.lora_target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def prefix_config(adapter: AdapterArgs):
    """peft PrefixTuningConfig: trained key/value vectors in front of every layer's attention. They
    start at zero, so the untrained model answers as its base (random ones put its loss far above)."""
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=adapter.num_virtual_tokens, init_weights="zero")


def ptuning_config(adapter: AdapterArgs):
    """peft PromptEncoderConfig (p-tuning): virtual input embeddings made by a small MLP encoder."""
    from peft import PromptEncoderConfig

    return PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=adapter.num_virtual_tokens)


# finetuning -> peft config (None: full fine-tuning, every weight trains and no adapter wraps the model)
PEFT_CONFIGS = {"lora": lora_config, "qlora": lora_config, "full": None, "prefix": prefix_config}
PEFT_CONFIGS["ptuning"] = ptuning_config


def qlora_placement(dtype_name: str, shards_params: bool, local_rank: int) -> dict:
    """from_pretrained kwargs for a 4-bit base. Whole on this process's GPU; or, under FSDP and
    ZeRO-3, left on the CPU for the sharder, with the packed 4-bit weights stored in the compute
    dtype: they can only shard float tensors of one dtype (bitsandbytes' FSDP-QLoRA guide)."""
    import torch

    quant = bnb_config(dtype_name)
    if not shards_params:
        return {"quantization_config": quant, "device_map": {"": local_rank}}
    quant.bnb_4bit_quant_storage = getattr(torch, dtype_name)
    return {"quantization_config": quant}


def load_peft(
    model_path: str,
    model_args: ModelArgs,
    lora: AdapterArgs,
    device: Device,
    seed: int,
    shards_params: bool = False,
    local_rank: int = 0,
    adapter: str | None = None,
):
    """transformers + peft (+ bitsandbytes 4-bit on CUDA): a fresh adapter of the finetuning's kind,
    `adapter` trained further, or (full) the model itself."""
    import torch
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer

    four_bit = model_args.load_in_4bit and device.kind == "cuda"
    try:
        require_safetensors(model_path, "the model")
    except ValueError as err:
        raise UserError(str(err)) from None
    kwargs = dict(
        dtype=getattr(torch, device.dtype), use_safetensors=True, trust_remote_code=model_args.trust_remote_code
    )
    if four_bit:
        kwargs.update(qlora_placement(device.dtype, shards_params, local_rank))
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=model_args.trust_remote_code)
    if four_bit and not shards_params:  # its fp32 upcast would break the one-dtype rule of FSDP / ZeRO-3
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=model_args.gradient_checkpointing)
    elif device.kind == "cuda" and not shards_params:  # the sharder places sharded weights itself
        model = model.to(f"cuda:{local_rank}")
    torch.manual_seed(seed)
    make_config = PEFT_CONFIGS[model_args.finetuning]
    if make_config is None:
        return model, tokenizer  # full fine-tuning: every weight trains
    if adapter:
        check_adapter_kind(adapter, model_args.finetuning)
        return PeftModel.from_pretrained(model, adapter, is_trainable=True), tokenizer
    return get_peft_model(model, make_config(lora)), tokenizer


# peft's name for each kind of adapter (adapter_config.json's peft_type)
PEFT_TYPES = {"lora": "LORA", "qlora": "LORA", "prefix": "PREFIX_TUNING", "ptuning": "P_TUNING"}


def check_adapter_kind(adapter: str, finetuning: str) -> None:
    """An --adapter goes on training as the kind it is: refuse one that is not what --finetuning says."""
    from peft import PeftConfig

    kind = str(PeftConfig.from_pretrained(adapter).peft_type).rsplit(".", 1)[-1]
    if kind != PEFT_TYPES[finetuning]:
        names = [k for k, v in PEFT_TYPES.items() if v == kind]
        raise UserError(
            f"{adapter} is a {kind} adapter, and --finetuning is {finetuning}: use --finetuning "
            f"{' or '.join(names) or 'matching its kind'}, or start without --adapter"
        )


def load_unsloth(
    model_path: str,
    model_args: ModelArgs,
    lora: AdapterArgs,
    device: Device,
    seed: int,
    adapter: str | None = None,
    **_placement,
):
    """Unsloth's FastLanguageModel: its own 4-bit loading and LoRA kernels."""
    if adapter:
        raise UserError("training on from an --adapter runs on the peft backend: add --backend peft")
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=model_path,
        max_seq_length=model_args.max_seq_length,
        dtype=None,
        load_in_4bit=model_args.load_in_4bit,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=lora.lora_r,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        target_modules=list(lora.lora_target_modules),
        bias="none",
        use_gradient_checkpointing="unsloth" if model_args.gradient_checkpointing else False,
        random_state=seed,
    )
    return model, tokenizer


BACKENDS = {"peft": load_peft, "unsloth": load_unsloth}


def cpu_substitutions(model_args: ModelArgs, optim: str, device: Device) -> dict[str, tuple]:
    """What a GPU recipe changes to run on CPU (same recipe, logged and saved with the run)."""
    if device.kind == "cuda":
        return {}
    changes = {}
    if model_args.load_in_4bit:
        changes["finetuning"] = ("qlora", "lora")  # bitsandbytes 4-bit backward is not trustworthy on CPU
    if "8bit" in optim:
        changes["optim"] = (optim, "adamw_torch")
    if model_args.gradient_checkpointing:
        changes["gradient_checkpointing"] = (True, False)  # memory is not the limit on CPU; it costs ~30%
    return changes
