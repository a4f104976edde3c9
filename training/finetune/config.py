"""The training recipe: dataclasses with help text. Defaults are the production recipe (Llama 3.2
1B Instruct, FineTome-100k, 4-bit QLoRA, the T4 settings of the Unsloth Llama 3.2 1B fine-tune); a YAML recipe overrides
them and the command line overrides the YAML (TrlParser). Unknown keys fail at start."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from chat_runtime.errors import UserError

ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BACKEND_NAMES = ("auto", "unsloth", "peft")
# --precision names -> torch dtype names; "auto" picks from the device (finetune.backends.detect_device).
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
PRECISIONS = ("auto", *DTYPES)


def _help(text: str, **kw):
    return field(metadata={"help": text}, **kw)


@dataclass
class ModelArgs:
    model: str = _help(
        "base instruct model: Hub id, local folder, or `embedded` (SmolLM2-135M-Instruct, offline)",
        default="meta-llama/Llama-3.2-1B-Instruct",
    )
    backend: str = _help("auto (Unsloth on a CUDA GPU when installed, else peft), unsloth, or peft", default="auto")
    load_in_4bit: bool = _help("QLoRA: load the base in 4-bit NF4 (CUDA only; plain LoRA on CPU)", default=True)
    max_seq_length: int = _help("longest training sequence in tokens; longer conversations are cut", default=2048)
    gradient_checkpointing: bool = _help("trade compute for memory (about 30% slower)", default=True)
    precision: str = _help(
        "auto: bf16 on Ampere+ GPUs and on CPUs with native bf16 (AVX512-BF16 or AMX; mixed "
        "precision, weights and adapter stay fp32: about 1.4x faster), fp16 on older GPUs (T4), "
        "else fp32; or fp32, bf16, fp16 (GPU only)",
        default="auto",
    )
    trust_remote_code: bool = _help("run a model repo's own Python code (off unless you trust it)", default=False)


@dataclass
class LoraArgs:
    lora_r: int = _help("LoRA rank", default=16)
    lora_alpha: int = _help("LoRA scaling numerator (scale = alpha / r)", default=16)
    lora_dropout: float = _help("dropout on the LoRA path", default=0.0)
    lora_target_modules: list[str] = _help(
        "modules that get LoRA (all 7 projections by default)", default_factory=lambda: list(ALL_PROJECTIONS)
    )


@dataclass
class DataArgs:
    dataset: list[str] = _help(
        "Hub dataset ids or local .jsonl/.json/.parquet/.csv files (several = a mixture)",
        default_factory=lambda: ["mlabonne/FineTome-100k"],
    )
    dataset_format: list[str] = _help(
        "per dataset: auto, sharegpt, messages, alpaca, prompt_response; preference "
        "sets (dpo, orpo; sft trains their chosen side): preference, hh, "
        "ultrafeedback, votes",
        default_factory=lambda: ["auto"],
    )
    dataset_weight: list[float] = _help(
        "per dataset: fraction of its rows to use (2.0 repeats it twice)", default_factory=lambda: [1.0]
    )
    dataset_split: str = _help("split to read from Hub datasets", default="train")
    eval_fraction: float = _help("share of rows held out for eval loss / perplexity (0 = none)", default=0.05)
    max_rows: int | None = _help("use at most this many rows after mixing (quick runs)", default=None)
    num_proc: int | None = _help(
        "processes for data preparation (default: one per core for 50k+ rows "
        "through tiktoken, else one, whose Rust tokenizer uses every core)",
        default=None,
    )


@dataclass
class TrainArgs:
    per_device_train_batch_size: int = _help("sequences per step per device", default=2)
    gradient_accumulation_steps: int = _help("steps accumulated per optimizer update", default=4)
    learning_rate: float = _help("peak learning rate", default=2e-4)
    warmup_steps: int = _help("linear warm-up steps", default=5)
    lr_scheduler_type: str = _help("linear, cosine, constant, ...", default="linear")
    optim: str = _help("optimizer; adamw_8bit needs CUDA (adamw_torch is used on CPU)", default="adamw_8bit")
    weight_decay: float = _help("decoupled weight decay", default=0.01)
    num_train_epochs: float = _help("passes over the training set", default=1.0)
    max_steps: int = _help("stop after this many optimizer steps (-1 = by epochs)", default=-1)
    seed: int = _help("seed for LoRA init, data order and sampling", default=3407)
    logging_steps: int = _help("log the loss every N steps (a NaN check runs on each log)", default=1)
    eval_steps: int = _help("evaluate every N steps", default=50)
    save_steps: int = _help("checkpoint every N steps (resume picks the newest)", default=100)
    save_total_limit: int = _help("checkpoints kept", default=3)
    early_stopping_patience: int = _help("stop after N evals without improvement (0 = off)", default=0)


@dataclass
class OutputArgs:
    output_dir: str = _help("run folder: adapter/, checkpoints/, logs/", default="runs/llama32-1b-finetome-qlora")
    overwrite: bool = _help("replace a finished run in output_dir instead of refusing", default=False)
    push_to_hub: str | None = _help("upload the adapter folder to this Hub repo (user/name)", default=None)
    private: bool = _help("make the pushed repo private", default=False)
    sample_prompts: list[str] = _help(
        "fixed prompts answered by base and fine-tune side by side",
        default_factory=lambda: [
            "What is the capital of France?",
            "Give me one tip for learning a new language.",
            "What is 12 + 30?",
            "How do you say 3 in Kannada?",
            "ನಮಸ್ಕಾರ!",
        ],
    )
    sample_max_new_tokens: int = _help("length of each side-by-side sample", default=64)
    verify: bool = _help(
        "after training, check the adapter answers the same merged and as GGUF (gguf/verify.py); "
        "the report goes in the model card and fidelity.json",
        default=True,
    )
    verify_quants: list[str] = _help(
        "GGUF files the fidelity check exports and compares", default_factory=lambda: ["f16", "q8_0", "q4_k_m"]
    )
    evaluate: bool = _help(
        "after training, compare the fine-tune with its base on the held-out split "
        "(training/evaluate.py: loss, judge scores, pairwise); the table goes in the model card",
        default=False,
    )
    evaluate_config: str | None = _help(
        "evaluate.py settings as YAML (e.g. training/eval/quick.yaml); default: its defaults", default=None
    )


METHODS = ("sft", "dpo", "orpo")


@dataclass
class MethodArgs:
    method: str = _help(
        "sft (learn the replies in the data), dpo (learn which of two replies people prefer, against "
        "a frozen reference), or orpo (SFT on the chosen reply plus an odds-ratio preference term, no "
        "reference)",
        default="sft",
    )
    beta: float = _help(
        "dpo: how far the tuned model may move from the reference (smaller = further); orpo: weight "
        "of the preference term",
        default=0.1,
    )
    sft_weight: float = _help(
        "dpo: weight of an SFT term (the chosen reply's mean negative log-likelihood) added to the "
        "DPO loss, as in RPO; it keeps the chosen replies likely instead of only pushing the "
        "rejected ones down (0 = plain DPO)",
        default=0.0,
    )
    adapter: str | None = _help(
        "start from this LoRA adapter (a run's adapter folder, e.g. runs/NAME/adapter, or a "
        "Hub id) and keep training it; its rank and target modules replace the lora_* "
        "settings. For dpo its frozen starting copy is the reference",
        default=None,
    )


ARG_CLASSES = (ModelArgs, LoraArgs, DataArgs, TrainArgs, OutputArgs, MethodArgs)


def check(
    model: ModelArgs,
    lora: LoraArgs,
    data: DataArgs,
    train: TrainArgs,
    out: OutputArgs,
    method: MethodArgs | None = None,
) -> None:
    """Refuse impossible combinations at start, saying what to change."""
    problems = []
    if method is not None and method.method not in METHODS:
        problems.append(f"method {method.method!r} is not one of {', '.join(METHODS)}")
    if method is not None and method.beta <= 0:
        problems.append(f"beta must be positive, got {method.beta}")
    if method is not None and method.sft_weight < 0:
        problems.append(f"sft_weight must be >= 0, got {method.sft_weight}")
    if model.backend not in BACKEND_NAMES:
        problems.append(f"backend {model.backend!r} is not one of {', '.join(BACKEND_NAMES)}")
    if model.precision not in PRECISIONS:
        problems.append(f"precision {model.precision!r} is not one of {', '.join(PRECISIONS)}")
    if not 0 <= data.eval_fraction < 1:
        problems.append(f"eval_fraction must be in [0, 1), got {data.eval_fraction}")
    if train.early_stopping_patience and not data.eval_fraction:
        problems.append("early_stopping_patience needs an eval split: set eval_fraction > 0")
    if train.early_stopping_patience and train.save_steps % train.eval_steps:
        problems.append("with early stopping, save_steps must be a multiple of eval_steps")
    if lora.lora_r < 1 or model.max_seq_length < 16:
        problems.append("lora_r must be >= 1 and max_seq_length >= 16")
    if any(m in ("embed_tokens", "lm_head") for m in lora.lora_target_modules):
        problems.append(
            "LoRA on embed_tokens/lm_head cannot be exported as a LoRA GGUF; drop them from lora_target_modules"
        )
    if problems:
        raise UserError("The recipe cannot run:\n  - " + "\n  - ".join(problems))


def as_dict(*args) -> dict:
    """One flat dict of every setting (what travels with the artifact)."""
    merged: dict = {}
    for part in args:
        merged.update(asdict(part))
    return merged
