"""Build the tiny Llama model and LoRA adapters that the local stack serves.

The model is a real Llama-architecture checkpoint with random weights: small
enough to load and answer in well under a second on a CPU, yet served by the
unmodified vLLM OpenAI server, so every HTTP behaviour the gateway relies on
(chat templates, streaming, runtime LoRA loading, errors) is the genuine one.
Nothing is downloaded: the tokenizer is trained here on a corpus generated
here, and every random draw is seeded, so two builds give identical files.

Layout of the output directory::

    model/              config.json, model.safetensors, tokenizer files,
                        generation_config.json (name: turnout/tiny-llama)
    adapters/formal     LoRA r=8 on q_proj, v_proj
    adapters/terse      LoRA r=8 on q_proj, v_proj
    adapters/pirate     LoRA r=8 on q_proj, v_proj
    adapters/wide       LoRA r=16 (for checks against --max-lora-rank 8)
    .turnout-complete   written last; its presence means the build finished

Run it with the vLLM environment's interpreter (it needs torch, transformers,
tokenizers, peft and safetensors)::

    python build_tiny_model.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One trainer thread: BPE merge ties then resolve in a fixed order.
os.environ.setdefault("RAYON_NUM_THREADS", "1")

import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

MODEL_NAME = "turnout/tiny-llama"
MARKER = ".turnout-complete"
VOCAB_SIZE = 4096
MAX_POSITIONS = 2048

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
PAD = "<|pad|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
SPECIAL_TOKENS = [BOS, EOS, PAD, START_HEADER, END_HEADER, EOT]

# Llama-3 layout: every message is a header plus content closed by <|eot_id|>;
# the generation prompt opens an assistant header.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['content'] is string %}"
    "{{- message['content'] | trim }}"
    "{%- else %}"
    "{%- for part in message['content'] %}"
    "{%- if part['type'] == 'text' %}{{- part['text'] | trim }}{%- endif %}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)

# Adapters served at rank 8 (name -> seed) and the one that exceeds it.
ADAPTERS: dict[str, tuple[int, int]] = {
    "formal": (8, 101),
    "terse": (8, 202),
    "pirate": (8, 303),
    "wide": (16, 404),
}

_NOUNS = """
account address agent answer archive area article audience author balance
bank barrel battery beach bear bell bird board boat body book border bottle
branch bread bridge budget buffer builder cabin cable camera campaign canal
captain card cargo carpet castle cat cell chain chair channel chapter chart
cheese chest child church circle city claim class client cliff clock cloud
coast code coffee coin collar colour column comet company compass contract
cook copper corner cottage council country cousin crane crew crown cup
customer dashboard data deck desert desk detail device diagram dinner doctor
document dog door dragon drawer dream driver drum eagle edge editor engine
engineer estate evening factory farmer feather fence field file finger fire
fleet floor flower forest fortune fountain garden gate gateway glass goat
gold governor grain graph guard guest guide hammer harbor harvest hat health
helmet hill history horizon horse hospital hotel hour house island jacket
journal journey judge kernel kettle key kitchen knight label ladder lake
lamp lantern latency lawyer leader letter library lighthouse limit line lion
list log machine manager map market mast meadow measure memory merchant
message meter metric minister minute mirror model monkey moon morning
mountain museum needle network night notebook number ocean office officer
orchard owner package page painter palace paper parrot partner passenger
path pattern pencil pepper pilot pirate planet plate player pocket poem
policy port portrait princess printer prison problem process profile
project prompt queen queue question rabbit rail record reply report request
river road robot rocket roof room root route rule sailor sample schedule
school scientist screen sea season secret server shadow ship shore signal
silver singer sister sky soldier song source station statue stone storm
story stream street student summer sun supplier surface sword system table
tailor target teacher temple tenant term theatre thread ticket tide timber
token tower town track trader train treasure tree tunnel valley vendor
village voice voyage wagon wall weather wheel whistle window winter wizard
worker writer yard
"""

_VERBS = """
accept admire answer arrive ask bake balance believe borrow build call carry
catch change check clean climb close collect compare compute cook count
cover cross deliver describe design discover draw dream drink drive earn
enter escape explain explore fetch fill find finish fix follow forget gather
grow guard guide help hide hold hunt improve inspect invite join jump keep
kick knock label laugh launch lead learn lift listen load measure mend move
name notice obey offer open order paint pass pay pick plan plant play point
polish pour prefer prepare print promise protect pull push reach read record
reject remember repair repeat reply report request rescue return ride route
sail save score search send serve share shout sign sing sketch solve sort
start steer stop store study supply support sweep teach test thank trade
train travel trust turn unload unlock update visit wait walk wander want
warn wash watch wave weigh whisper win wish wonder work write
"""

_ADJECTIVES = """
ancient angry bright brave broad busy calm careful cheerful clever cold
crisp curious dark deep distant eager early empty fair famous fast fierce
formal fresh gentle golden grand green happy heavy hidden honest huge humble
icy jolly kind large late lazy little lively local loud lucky modern narrow
noble odd old pale patient plain polite proud quick quiet rapid rare ready
remote rich rough round royal rusty salty scarlet secret sharp shiny short
silent simple slow small smooth soft solid steady strange strict strong
sudden sunny sweet swift tall tender terse tidy tiny tired tough vast warm
weary wide wild wise wooden young
"""

_NAMES = """
Ada Alice Amara Ben Bruno Carla Chen Dara Diego Elena Emil Farah Felix Greta
Hana Hugo Ines Ivan Jonas Juno Kai Keiko Lars Lena Luca Mara Milo Nadia
Nico Olga Omar Paula Pavel Quinn Rosa Ruben Sara Soren Tara Theo Uma Vera
Victor Wren Yara Yusuf Zara Zeno
"""

_PLACES = """
Amsterdam Athens Berlin Bristol Cairo Dublin Geneva Genoa Hamburg Helsinki
Lisbon Lyon Madrid Marseille Milan Naples Oslo Porto Prague Riga Rotterdam
Seville Tallinn Trieste Valencia Venice Vienna Vilnius Warsaw Zagreb
"""

_OPENERS = [
    "Good morning.",
    "Thank you for your patience.",
    "Ahoy, matey!",
    "Noted.",
    "Certainly.",
    "Arr, listen well.",
    "Understood.",
    "Please find the details below.",
    "Done.",
    "Shiver me timbers!",
    "We regret the delay.",
    "Yes.",
]


def _words(block: str) -> list[str]:
    return block.split()


def _past(verb: str) -> str:
    if verb.endswith("e"):
        return verb + "d"
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ied"
    return verb + "ed"


def _ing(verb: str) -> str:
    if verb.endswith("e") and not verb.endswith("ee"):
        return verb[:-1] + "ing"
    return verb + "ing"


def _plural(noun: str) -> str:
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def build_corpus(seed: int = 7, lines: int = 600) -> list[str]:
    """Return a deterministic English-like corpus for training the tokenizer.

    Sentences are assembled from word lists with inflections, names, places
    and numbers, so byte-pair merges find thousands of distinct pieces and
    the vocabulary fills with real sub-words rather than reserved filler.
    """
    rng = random.Random(seed)
    nouns = _words(_NOUNS)
    verbs = _words(_VERBS)
    adjectives = _words(_ADJECTIVES)
    names = _words(_NAMES)
    places = _words(_PLACES)

    def noun_phrase() -> str:
        noun = rng.choice(nouns)
        if rng.random() < 0.3:
            noun = _plural(noun)
        article = rng.choice(["the", "a", "every", "that", "our", "their", "this"])
        if rng.random() < 0.5:
            return f"{article} {rng.choice(adjectives)} {noun}"
        return f"{article} {noun}"

    def noun() -> str:
        return rng.choice(nouns)

    def nouns_() -> str:
        return _plural(rng.choice(nouns))

    def verb() -> str:
        return rng.choice(verbs)

    def adj() -> str:
        return rng.choice(adjectives)

    def name() -> str:
        return rng.choice(names)

    def place() -> str:
        return rng.choice(places)

    def num(low: int, high: int) -> int:
        return rng.randint(low, high)

    def manner() -> str:
        return rng.choice(["quickly", "slowly", "quietly", "gladly", "rarely", "often"])

    templates = [
        lambda: f"{name()} {_past(verb())} {noun_phrase()} near {place()}.",
        lambda: f"The {noun()} is {adj()} and {adj()} today.",
        lambda: f"Why did {noun_phrase()} {verb()} {noun_phrase()} in {num(1700, 2099)}?",
        lambda: f"{name()} was {_ing(verb())} {noun_phrase()} while {name()} {_past(verb())}.",
        lambda: f"Please {verb()} {noun_phrase()} before {num(1, 12)} o'clock.",
        lambda: f"{rng.choice(_OPENERS)} {noun_phrase().capitalize()} will {verb()} {noun_phrase()}.",
        lambda: f"Order {num(1000, 99999)} costs {num(1, 999)}.{num(10, 99)} euros and ships from {place()}.",
        lambda: f"In {place()}, {nouns_()} {verb()} {nouns_()} {manner()}.",
        lambda: f'{name()}: "{verb().capitalize()} the {noun()}, then {verb()} the {noun()}!"',
        lambda: f"Step {num(1, 9)}: {verb()} {noun_phrase()}; step {num(10, 19)}: {verb()} {noun_phrase()}.",
        lambda: f"The {adj()} {noun()} {_past(verb())} {num(2, 500)} {nouns_()}.",
        lambda: f"{name()} and {name()} {_past(verb())} {noun_phrase()} at {num(0, 23):02d}:{num(0, 59):02d}.",
    ]
    corpus = [rng.choice(templates)() for _ in range(lines)]
    # Every word form at least once, so no base word is left out of the merges.
    forms = [
        nouns,
        [_plural(n) for n in nouns],
        [n.capitalize() for n in nouns],
        verbs,
        [_past(v) for v in verbs],
        [_ing(v) for v in verbs],
        [_plural(v) for v in verbs],
        [v.capitalize() for v in verbs],
        adjectives,
        [_adverb(a) for a in adjectives],
        [a + "ness" for a in adjectives],
        [a.capitalize() for a in adjectives],
        names,
        places,
        [rng.choice(nouns) + rng.choice(nouns) for _ in range(400)],
        [str(n) for n in range(0, 1000, 7)],
    ]
    for group in forms:
        for start in range(0, len(group), 16):
            corpus.append(" ".join(group[start : start + 16]))
    return corpus


def _adverb(adjective: str) -> str:
    if adjective.endswith("y"):
        return adjective[:-1] + "ily"
    if adjective.endswith("le"):
        return adjective[:-1] + "y"
    return adjective + "ly"


def build_tokenizer(corpus: list[str]) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of exactly VOCAB_SIZE entries and wrap it."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    # A corpus too small to reach VOCAB_SIZE merges is topped up with reserved
    # specials (as Llama 3 does) so that every id the model can emit decodes.
    missing = VOCAB_SIZE - tok.get_vocab_size()
    if missing > 0:
        tok.add_special_tokens([f"<|reserved_special_token_{i}|>" for i in range(missing)])
    if tok.get_vocab_size() != VOCAB_SIZE:
        raise SystemExit(f"tokenizer has {tok.get_vocab_size()} entries, expected {VOCAB_SIZE}")
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS} $B",
        special_tokens=[(BOS, bos_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOT,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )


def build_model(tokenizer: PreTrainedTokenizerFast, out: Path) -> None:
    """Save a randomly initialised Llama (float32 safetensors) into out."""
    bos_id = tokenizer.convert_tokens_to_ids(BOS)
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    eot_id = tokenizer.convert_tokens_to_ids(EOT)
    pad_id = tokenizer.convert_tokens_to_ids(PAD)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,  # head_dim 32: the CPU attention kernels need >= 32
        num_key_value_heads=4,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=bos_id,
        eos_token_id=[eos_id, eot_id],
        pad_token_id=pad_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    config._name_or_path = MODEL_NAME
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.name_or_path = MODEL_NAME
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(
        bos_token_id=bos_id,
        eos_token_id=[eos_id, eot_id],
        pad_token_id=pad_id,
    ).save_pretrained(out)
    tokenizer.save_pretrained(out, save_jinja_files=False)
    _record_name(out / "config.json", "_name_or_path")
    _record_name(out / "tokenizer_config.json", "name_or_path")


def _record_name(path: Path, key: str) -> None:
    data = json.loads(path.read_text())
    data[key] = MODEL_NAME
    if isinstance(data.get("target_modules"), list):
        # peft keeps target modules in a set; its order varies run to run.
        data["target_modules"] = sorted(data["target_modules"])
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def build_adapter(model_dir: Path, out: Path, rank: int, seed: int) -> None:
    """Save a LoRA adapter on q_proj/v_proj with seeded, non-zero A and B.

    peft starts B at zero (an adapter that changes nothing); drawing both
    matrices from a seeded normal makes each adapter steer greedy decoding
    somewhere different from the base model and from the other adapters.
    """
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["q_proj", "v_proj"],
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    base = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(peft_model.named_parameters()):
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    peft_model.save_pretrained(out, safe_serialization=True)
    _record_name(out / "adapter_config.json", "base_model_name_or_path")
    readme = out / "README.md"
    if readme.exists():
        readme.unlink()


def build(dest: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        model_dir = tmp / "model"
        model_dir.mkdir()
        tokenizer = build_tokenizer(build_corpus())
        build_model(tokenizer, model_dir)
        for name, (rank, seed) in ADAPTERS.items():
            build_adapter(model_dir, tmp / "adapters" / name, rank, seed)
        (tmp / MARKER).write_text(f"{MODEL_NAME}\n")
        if dest.exists() and not (dest / MARKER).exists():
            shutil.rmtree(dest)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / MARKER).exists():
                raise
            # Another build finished first; its result is the same.
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="directory to create")
    args = parser.parse_args(argv)
    dest: Path = args.out.resolve()
    # Let SIGTERM unwind like Ctrl-C so the temporary build directory is removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if not (dest / MARKER).exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        print(f"building tiny model and adapters into {dest}", file=sys.stderr)
        build(dest)
    print(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
