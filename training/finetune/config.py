"""The training recipe: dataclasses with help text. Defaults are the production recipe (Llama 3.2
1B Instruct, FineTome-100k, 4-bit QLoRA, the T4 settings of the Unsloth Llama 3.2 1B fine-tune); a YAML recipe overrides
them and the command line overrides the YAML (TrlParser). Unknown keys fail at start."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields

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
    finetuning: str = _help(
        "what training changes: lora (low-rank adapters on the projections), qlora (LoRA on a 4-bit NF4 "
        "base; CUDA only, plain LoRA on CPU), full (every weight; no adapter, the run saves a whole model), "
        "prefix (peft's prefix tuning: trained key/value vectors in every layer) or ptuning (peft's "
        "p-tuning: virtual input tokens from a small encoder). prefix and ptuning have no GGUF form",
        default="qlora",
    )
    max_seq_length: int = _help("longest training sequence in tokens; longer conversations are cut", default=2048)
    gradient_checkpointing: bool = _help("trade compute for memory (about 30% slower)", default=True)
    precision: str = _help(
        "auto: bf16 on Ampere+ GPUs and on CPUs with native bf16 (AVX512-BF16 or AMX; mixed "
        "precision, weights and adapter stay fp32: about 1.4x faster), fp16 on older GPUs (T4), "
        "else fp32; or fp32, bf16, fp16 (GPU only)",
        default="auto",
    )
    trust_remote_code: bool = _help("run a model repo's own Python code (off unless you trust it)", default=False)

    @property
    def load_in_4bit(self) -> bool:
        """QLoRA's 4-bit base (the one setting that says it is finetuning)."""
        return self.finetuning == "qlora"


@dataclass
class AdapterArgs:
    """The trained part's shape: LoRA's (lora, qlora) or the virtual tokens' (prefix, ptuning)."""

    lora_r: int = _help("LoRA rank", default=16)
    lora_alpha: int = _help("LoRA scaling numerator (scale = alpha / r)", default=16)
    lora_dropout: float = _help("dropout on the LoRA path", default=0.0)
    lora_target_modules: list[str] = _help(
        "modules that get LoRA (all 7 projections by default)", default_factory=lambda: list(ALL_PROJECTIONS)
    )
    num_virtual_tokens: int = _help(
        "prefix, ptuning: trained virtual tokens (prefix: key/value pairs per layer; ptuning: input embeddings)",
        default=20,
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
    eval_max_rows: int = _help(
        "evaluate on at most this many of the held-out rows (drawn once with the seed, the same rows "
        "at every evaluation); keeps evaluation a small share of training (0 = all held-out rows)",
        default=200,
    )
    dataset_rows: list[int] = _help(
        "per dataset: its row count, for the plan when the set is neither a local file nor a known Hub "
        "set (the dataset card's figure); nothing is downloaded to count",
        default_factory=list,
    )
    num_proc: int | None = _help(
        "processes for data preparation (default: one per core for 50k+ rows "
        "through tiktoken, else one, whose Rust tokenizer uses every core)",
        default=None,
    )


@dataclass
class TrainArgs:
    per_device_train_batch_size: int = _help("sequences per step per device", default=2)
    gradient_accumulation_steps: int = _help("steps accumulated per optimizer update", default=4)
    padding_free: bool = _help(
        "sft: lay a batch's rows end to end instead of padding them to the longest; each row keeps its "
        "own positions and attends only to itself (transformers' masks for packed rows), so the loss "
        "is the padded batch's and no padding is computed. Not for prefix / ptuning (their virtual "
        "tokens need rows of their own) or dpo / orpo",
        default=False,
    )
    learning_rate: float = _help("peak learning rate", default=2e-4)
    warmup_steps: int = _help("linear warm-up steps (warmup_ratio, when set, replaces it)", default=5)
    warmup_ratio: float = _help(
        "linear warm-up as a fraction of all steps, e.g. 0.03 (0 = use warmup_steps)", default=0.0
    )
    lr_scheduler_type: str = _help(
        "linear, cosine, cosine_with_min_lr (cosine down to min_lr_ratio x learning_rate), constant, ...",
        default="linear",
    )
    min_lr_ratio: float = _help("cosine_with_min_lr: the floor, as a fraction of learning_rate", default=0.1)
    optim: str = _help("optimizer; adamw_8bit needs CUDA (adamw_torch is used on CPU)", default="adamw_8bit")
    weight_decay: float = _help("decoupled weight decay", default=0.01)
    num_train_epochs: float = _help("passes over the training set", default=1.0)
    max_steps: int = _help("stop after this many optimizer steps (-1 = by epochs)", default=-1)
    seed: int = _help("seed for LoRA init, data order and sampling", default=3407)
    logging_steps: int = _help("log the loss every N steps (a NaN check runs on each log)", default=1)
    eval_steps: int = _help(
        "evaluate every N steps (each evaluation costs eval_max_rows forward passes; the plan shows the share)",
        default=200,
    )
    save_steps: int = _help("checkpoint every N steps (resume picks the newest)", default=100)
    save_total_limit: int = _help("checkpoints kept", default=3)
    early_stopping_patience: int = _help("stop after N evals without improvement (0 = off)", default=0)
    sample_every_eval: int = _help(
        "at each evaluation, print the replies to the first N sample_prompts (a few tokens each) to watch "
        "the model learn (0 = off)",
        default=1,
    )
    report_to: list[str] = _help(
        "trackers besides TensorBoard: wandb (offline unless WANDB_MODE says otherwise), trackio (local)",
        default_factory=list,
    )


@dataclass
class OutputArgs:
    output_dir: str = _help("run folder: adapter/, checkpoints/, logs/", default="runs/llama32-1b-finetome-qlora")
    overwrite: bool = _help("replace a finished run in output_dir instead of refusing", default=False)
    dry_run: bool = _help(
        "print the plan (steps, tokens, evaluations, checkpoints, eval share, T4 hours) and write "
        "output_dir/plan.json, then stop: no model loaded, no data downloaded",
        default=False,
    )
    adapter_checkpoint: str = _help(
        "what the adapter folder holds: best (the checkpoint with the lowest eval loss; the last "
        "one when nothing was evaluated) or last; the card says which",
        default="best",
    )
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
ADAPTER_CHECKPOINTS = ("best", "last")
TRACKERS = ("wandb", "trackio")


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


ARG_CLASSES = (ModelArgs, AdapterArgs, DataArgs, TrainArgs, OutputArgs, MethodArgs)


@dataclass
class Config:
    """Every setting of a run, one dataclass per part (what `training/train.py` parses, and what
    `finetune.train` takes)."""

    model: ModelArgs = field(default_factory=ModelArgs)
    adapter: AdapterArgs = field(default_factory=AdapterArgs)
    data: DataArgs = field(default_factory=DataArgs)
    train: TrainArgs = field(default_factory=TrainArgs)
    output: OutputArgs = field(default_factory=OutputArgs)
    method: MethodArgs = field(default_factory=MethodArgs)

    def parts(self) -> tuple:
        return (self.model, self.adapter, self.data, self.train, self.output, self.method)


def make_parser():
    """The command line: defaults < `--config` YAML < arguments (trl's TrlParser)."""
    from trl import TrlParser

    # No abbreviations: a typo like --learning-rat must fail, not quietly set learning_rate.
    return TrlParser(ARG_CLASSES, allow_abbrev=False)


def parse(argv: list[str] | None = None) -> Config:
    """A Config from command-line arguments (sys.argv when None), as training/train.py reads them."""
    try:
        return Config(*make_parser().parse_args_and_config(argv))
    except ValueError as error:  # trl's parser names the unknown keys of a YAML recipe this way
        if "Unknown arguments" not in str(error):
            raise
        renamed = {"--load_in_4bit": "`load_in_4bit` is now `finetuning: qlora` (or `lora`)"}
        hints = [hint for key, hint in renamed.items() if key in str(error)]
        unknown = [a.lstrip("-") for a in re.findall(r"'(--[^']+)'", str(error))]
        raise UserError(
            f"the recipe has settings train.py does not know: {', '.join(unknown)}. "
            + "".join(f"{hint}. " for hint in hints)
            + "`python training/train.py --help` lists every setting."
        ) from None


def load_config(recipe: str | None = None, **settings) -> Config:
    """A Config as the command line would build it: defaults < the YAML `recipe` < `settings`
    (keyword arguments named like the command-line options). An unknown name is an error."""
    config = parse(["--config", str(recipe)] if recipe else [])
    for name, value in settings.items():
        part = next((p for p in config.parts() if name in {f.name for f in fields(p)}), None)
        if part is None:
            raise UserError(f"unknown setting {name!r}: `python training/train.py --help` lists them")
        setattr(part, name, value)
    return config


def check(
    model: ModelArgs,
    lora: AdapterArgs,
    data: DataArgs,
    train: TrainArgs,
    out: OutputArgs,
    method: MethodArgs | None = None,
) -> None:
    """Refuse impossible combinations at start, saying what to change."""
    problems: list[str] = []
    problems += finetuning_problems(model, lora, method)
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
    if out.adapter_checkpoint not in ADAPTER_CHECKPOINTS:
        problems.append(f"adapter_checkpoint {out.adapter_checkpoint!r} is not one of {', '.join(ADAPTER_CHECKPOINTS)}")
    if not 0 <= train.warmup_ratio < 1 or not 0 <= train.min_lr_ratio <= 1:
        problems.append("warmup_ratio must be in [0, 1) and min_lr_ratio in [0, 1]")
    if train.padding_free and (model.finetuning in ("prefix", "ptuning") or (method and method.method != "sft")):
        problems.append("padding_free batches sft rows on lora, qlora or full: set it to false here")
    if data.eval_max_rows < 0:
        problems.append(f"eval_max_rows must be >= 0, got {data.eval_max_rows}")
    if data.dataset_rows and len(data.dataset_rows) != len(data.dataset):
        problems.append(f"dataset_rows needs one count per dataset ({len(data.dataset)}), got {len(data.dataset_rows)}")
    unknown = sorted(set(train.report_to) - set(TRACKERS))
    if unknown:
        problems.append(f"report_to {unknown} not one of {', '.join(TRACKERS)} (TensorBoard always writes)")
    if lora.lora_r < 1 or model.max_seq_length < 16:
        problems.append("lora_r must be >= 1 and max_seq_length >= 16")
    if any(m in ("embed_tokens", "lm_head") for m in lora.lora_target_modules):
        problems.append(
            "LoRA on embed_tokens/lm_head cannot be exported as a LoRA GGUF; drop them from lora_target_modules"
        )
    if problems:
        raise UserError("The recipe cannot run:\n  - " + "\n  - ".join(problems))


LORA_SETTINGS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")
VIRTUAL_TOKEN_SETTINGS = ("num_virtual_tokens",)


@dataclass(frozen=True)
class Finetuning:
    """What one --finetuning value trains and leaves behind."""

    reads: tuple[str, ...]  # the AdapterArgs it takes; any other one set away from its default is refused
    folder: str  # the run's artifact: `adapter` (a peft adapter) or `model` (a whole model)
    gguf: bool  # llama.cpp can run it (merged, or as it is)
    what: str  # for the card and messages


FINETUNING = {
    "lora": Finetuning(LORA_SETTINGS, "adapter", True, "a LoRA adapter"),
    "qlora": Finetuning(LORA_SETTINGS, "adapter", True, "a LoRA adapter (trained on a 4-bit base)"),
    "full": Finetuning((), "model", True, "a full fine-tune (every weight)"),
    "prefix": Finetuning(VIRTUAL_TOKEN_SETTINGS, "adapter", False, "a prefix-tuning adapter"),
    "ptuning": Finetuning(VIRTUAL_TOKEN_SETTINGS, "adapter", False, "a p-tuning adapter"),
}
FINETUNINGS = tuple(FINETUNING)
PREFERENCE_FINETUNINGS = ("lora", "qlora")  # dpo / orpo: their reference is the base with the LoRA disabled


def changed_settings(args) -> list[str]:
    """The fields of a dataclass set away from their defaults."""
    from dataclasses import MISSING, fields

    changed = []
    for f in fields(args):
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if getattr(args, f.name) != default:
            changed.append(f.name)
    return changed


def finetuning_problems(model: ModelArgs, adapter: AdapterArgs, method: MethodArgs | None) -> list[str]:
    """Settings the chosen finetuning cannot take, each with what to use instead."""
    name = model.finetuning
    if name not in FINETUNINGS:
        return [f"finetuning {name!r} is not one of {', '.join(FINETUNINGS)}"]
    problems = []
    unread = [s for s in changed_settings(adapter) if s not in FINETUNING[name].reads]
    if unread:
        why = {
            "full": "full fine-tuning trains every weight and has no adapter shape",
            "prefix": "prefix tuning's size is num_virtual_tokens",
            "ptuning": "p-tuning's size is num_virtual_tokens",
        }.get(name, "LoRA's size is lora_r and lora_alpha")
        problems.append(f"finetuning {name} does not read {', '.join(unread)}: drop them ({why})")
    if name not in ("lora", "qlora") and model.backend == "unsloth":
        problems.append(f"Unsloth trains lora and qlora here, not {name}: use --backend peft (or auto, which picks it)")
    if method is not None and method.method != "sft" and name not in PREFERENCE_FINETUNINGS:
        problems.append(
            f"{method.method} trains a LoRA here (its reference is the base with the LoRA disabled): use "
            f"--finetuning lora or qlora, not {name}"
        )
    if method is not None and method.adapter and name == "full":
        problems.append(
            "--adapter goes on training an adapter; to go on from a full fine-tune, pass its folder as --model"
        )
    if adapter.num_virtual_tokens < 1:
        problems.append(f"num_virtual_tokens must be >= 1, got {adapter.num_virtual_tokens}")
    return problems


def as_dict(*args) -> dict:
    """One flat dict of every setting (what travels with the artifact)."""
    merged: dict = {}
    for part in args:
        merged.update(asdict(part))
    return merged
