"""What the paths benchmark sends: the gateway's configuration, the request bodies and the texts in them.

Pure and deterministic (no I/O, no gateway import), so the load generator, the in-process measurements and
the tests build exactly the same texts. Every "new" text is a template filled from an index: text ``i`` of
a pool differs from every other text of every pool in its digits, so it stays distinct after the embedding
cache folds case and spacing together, and an embedding cache never serves it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

MODEL = "bench-model"  # the fake upstream's (and so the gateway's base model's) name
RULES_POLICY = "rules-desk"
SEMANTIC_POLICY = "support-bot"
RAG_POLICY = "kb-answer"
COLLECTION = "kb"

# The fixed question of the paths that embed nothing (and of the upstream directly): as long as the others.
FIXED_TEXT = "Where is my order 48213? It was supposed to arrive on Monday and the tracking page is empty."
# The semantic path's repeated question: embedded once, then served from the embedding cache.
REPEATED_TEXT = "Where is my parcel? It was supposed to arrive on Monday and nobody has told me anything."
RULES_METADATA = {"channel": "chat", "tier": "silver"}  # passes four rules, then the fifth matches

PRODUCTS = [
    "kettle",
    "toaster",
    "blender",
    "coffee grinder",
    "espresso machine",
    "rice cooker",
    "slow cooker",
    "air fryer",
    "food processor",
    "hand mixer",
    "stand mixer",
    "juicer",
    "waffle maker",
    "sandwich press",
    "microwave",
    "steam iron",
    "vacuum cleaner",
    "robot vacuum",
    "hair dryer",
    "electric toothbrush",
    "desk lamp",
    "floor lamp",
    "space heater",
    "tower fan",
    "dehumidifier",
    "air purifier",
    "humidifier",
    "bathroom scale",
    "kitchen scale",
    "smart plug",
    "doorbell camera",
    "baby monitor",
    "bread maker",
    "ice cream maker",
    "milk frother",
    "water filter jug",
    "pressure cooker",
    "induction hob",
    "dishwasher",
    "tumble dryer",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
PEOPLE = ["Ms Novak", "Mr Okafor", "Dr Lindqvist", "Ms Haddad", "Mr Tanaka", "Mrs Moreau", "Mr Costa"]
PARTS = ["the filter", "the seals", "the brush head", "the glass jug", "the blades", "the battery", "the cable"]

INTENTS: dict[str, dict[str, Any]] = {
    "formal-writing": {
        "threshold": 0.45,
        "examples": [
            "Please draft a formal letter to our customer",
            "Write an official notice to the client about the change",
            "Compose a polite business email to a supplier",
            "Prepare a formal reply to the complaint we received",
        ],
    },
    "order-status": {
        "threshold": 0.45,
        "examples": [
            "Where is my package?",
            "When will my order arrive?",
            "Can you track my delivery for me?",
            "My parcel is late, has it been shipped?",
        ],
    },
    "product-facts": {
        "threshold": 0.4,
        "examples": [
            "What are your opening hours?",
            "How long is the warranty?",
            "How much does shipping cost?",
            "Can I return an item and get a refund?",
            "How do I clean and descale the machine?",
        ],
    },
    "small-talk": {
        "threshold": 0.5,
        "examples": ["Hi, how are you today?", "Thanks, that was helpful!", "Good morning!"],
    },
}

_SEMANTIC_TEMPLATES = [
    "Where is my order {n}? It was supposed to arrive on {day}.",
    "Can you track parcel {n} for me? The tracking page has not changed since {day}.",
    "When will order {n} with the {product} be delivered?",
    "How long is the warranty on the {product} from order {n}?",
    "Can I return the {product} I bought on {day} (receipt {n}) and get a refund?",
    "How much does shipping a {product} to postcode {n} cost?",
    "Please draft a formal letter to {person} about invoice {n}.",
    "Write an official notice to {person} that contract {n} changes on {day}.",
    "Hi, thanks for sorting out ticket {n} so quickly, have a good {day}!",
    "Is warehouse {n} open on {day}, and can I collect my {product} there?",
]
_KB_TEMPLATES = [
    "What does the warranty on the {product} cover? I have order {n}.",
    "How do I clean and descale the {product}? Serial number {n}.",
    "How long does delivery of a {product} take to postcode {n}?",
    "Can I return the {product} from receipt {n} if I opened the box?",
    "The {product} with serial {n} will not switch on: what should I check first?",
    "Which spare parts can I order for the {product}, model {n}?",
    "Is the {product} safe to leave running overnight? Asking about unit {n}.",
    "How do I set up the {product} I received with order {n}?",
]
_KB_TOPICS = [
    (
        "Warranty",
        "The {product} carries a {years}-year warranty from the date of purchase. It covers faults in materials "
        "and workmanship, but not wear parts such as {part}, damage from dropping, or use on the wrong voltage. "
        "A claim needs the receipt and the serial number printed under the base.",
    ),
    (
        "Cleaning and care",
        "To clean the {product}, unplug it and let it cool for {minutes} minutes. Wipe the outside with a damp "
        "cloth and never put the base in the dishwasher. In hard-water areas descale it every {weeks} weeks "
        "with descaler {code}.",
    ),
    (
        "Delivery",
        "Standard delivery of the {product} takes {days} working days and costs {price} euros; orders above "
        "{free} euros ship free. Express delivery arrives the next working day when ordered before 2 pm. The "
        "tracking link is emailed when the parcel leaves the warehouse.",
    ),
    (
        "Returns and refunds",
        "You may return the {product} within {returns} days of delivery for a full refund when it is unused and "
        "in its original packaging. Opened items are refunded minus a {fee} percent restocking fee. Start a "
        "return from the order page; the label is free.",
    ),
    (
        "Troubleshooting",
        "If the {product} does not switch on, check the socket with another appliance, then the fuse in the "
        "plug ({amps} A). A blinking light means it overheated: unplug it for {minutes} minutes. If it still "
        "fails, contact support with the serial number.",
    ),
    (
        "Spare parts",
        "Spare parts for the {product} are sold for {spare_years} years after the model is discontinued. "
        "The most ordered are {part} (part {code}) and the power cable. Parts ship in {days} working days.",
    ),
    (
        "Safety",
        "Do not leave the {product} running unattended for more than {hours} hours. Keep it {cm} cm away from "
        "walls and curtains, and out of reach of children. Never use it with an extension reel that is "
        "still wound up.",
    ),
    (
        "Setting up",
        "Unpack the {product}, remove every sticker and run it once empty for {minutes} minutes to burn off "
        "factory oil. Register it within {returns} days to extend the warranty by one year.",
    ),
]
_CHUNK_SENTENCES = [
    "Customer {n} reported that the {product} stopped after {days} days of daily use.",
    "The support agent checked the serial number and confirmed the warranty runs until {year}.",
    "A replacement for {part} was sent from warehouse {w} on {day}.",
    "The customer asked whether the {product} can be used on {volts} volts while travelling.",
    "Our guidance is to descale the {product} every {weeks} weeks when the water is hard.",
    "Deliveries from warehouse {w} to the north take {days} working days on average.",
    "The refund of {price} euros was approved because the box was still sealed.",
    "Case {n} was closed after the customer confirmed the {product} works again.",
    "Engineers traced the fault to {part}, which wears faster above {celsius} degrees.",
    "The manual for the {product} was updated on {day} to explain the blinking light.",
]


def _fill(template: str, i: int, n: int) -> str:
    return template.format(
        n=n,
        day=DAYS[i % len(DAYS)],
        product=PRODUCTS[(i * 7 + 3) % len(PRODUCTS)],
        person=PEOPLE[i % len(PEOPLE)],
    )


def semantic_question(i: int) -> str:
    """The ``i``-th new question for the semantic policy (all four intents and some that match none)."""
    templates = _SEMANTIC_TEMPLATES
    return _fill(templates[i % len(templates)], i, 100_000 + i)


def kb_question(i: int) -> str:
    """The ``i``-th new question for the retrieval path, about the knowledge base's products."""
    templates = _KB_TEMPLATES
    return _fill(templates[i % len(templates)], i, 700_000 + i)


def kb_documents(count: int) -> list[dict[str, Any]]:
    """``count`` short help-centre articles (one chunk each), product by topic, as ``POST .../documents`` takes."""
    documents = []
    for i in range(count):
        product = PRODUCTS[i % len(PRODUCTS)]
        title, template = _KB_TOPICS[(i // len(PRODUCTS)) % len(_KB_TOPICS)]
        k = i + 1
        text = template.format(
            product=product,
            years=2 + k % 4,
            part=PARTS[k % len(PARTS)],
            minutes=10 + k % 20,
            weeks=4 + k % 9,
            code=f"SP-{1000 + k}",
            days=2 + k % 5,
            price=f"{4 + k % 7}.95",
            free=50 + 10 * (k % 6),
            returns=14 + 7 * (k % 3),
            fee=5 + k % 11,
            amps=3 if k % 2 else 13,
            spare_years=5 + k % 6,
            hours=2 + k % 10,
            cm=20 + 5 * (k % 6),
        )
        documents.append({"id": f"kb-{i}", "title": f"{title}: {product}", "text": f"{title} — {text}"})
    return documents


def chunk_sentences(i: int) -> Iterator[str]:
    """Sentences for the ``i``-th long chunk (a support case log), endless: a caller takes as many as fit."""
    k = 0
    while True:
        j = i * 13 + k
        template = _CHUNK_SENTENCES[(i + k) % len(_CHUNK_SENTENCES)]
        yield template.format(
            n=50_000 + i * 100 + k,
            product=PRODUCTS[j % len(PRODUCTS)],
            days=3 + j % 40,
            year=2027 + j % 4,
            part=PARTS[j % len(PARTS)],
            w=j % 17,
            day=DAYS[j % len(DAYS)],
            volts=110 if j % 2 else 230,
            weeks=4 + j % 9,
            price=f"{20 + j % 180}.{j % 100:02d}",
            celsius=60 + j % 40,
        )
        k += 1


def chat_body(model: str, text: str, metadata: dict[str, str] | None = None) -> bytes:
    """One non-streaming chat completion request, as the load generator sends it."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 16}
    if metadata:
        body["metadata"] = metadata
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True)
class RequestPath:
    """One request path: which body it sends and whether its text is new on every request."""

    name: str
    label: str
    model: str
    pool: str | None = None  # "semantic" or "kb": a new text each request; None: ``text`` every time
    text: str = FIXED_TEXT
    metadata: dict[str, str] | None = None

    def body(self, index: int = 0) -> bytes:
        """The body of request ``index`` (the same for every index when the text is fixed)."""
        if self.pool == "semantic":
            return chat_body(self.model, semantic_question(index), self.metadata)
        if self.pool == "kb":
            return chat_body(self.model, kb_question(index), self.metadata)
        return chat_body(self.model, self.text, self.metadata)


DIRECT = RequestPath("direct", "upstream directly", MODEL)
PATHS = [
    DIRECT,
    RequestPath("model", "by model name (the base model)", MODEL),
    RequestPath("rules", "rules-only policy (keywords, metadata, regex)", RULES_POLICY, metadata=RULES_METADATA),
    RequestPath("semantic-new", "semantic policy, new text", SEMANTIC_POLICY, pool="semantic"),
    RequestPath("semantic-repeat", "semantic policy, repeated text (cache hit)", SEMANTIC_POLICY, text=REPEATED_TEXT),
    RequestPath("rag", f"RAG answer ({COLLECTION}, base generator), new question", RAG_POLICY, pool="kb"),
]


def path(name: str) -> RequestPath:
    return next(p for p in PATHS if p.name == name)


EXPECTED_RULE = {"rules": "orders", "rag": "knowledge-base"}  # checked before measuring


def gateway_config(upstream_url: str, store_path: str, backend: str = "auto") -> dict[str, Any]:
    """The gateway's configuration: the upstream as its base model, three policies, four intents, one collection,
    the embedding model run as ``backend`` says (``embeddings.backend``)."""
    base_prompt = "You are the support assistant of Acme. Answer briefly and politely."
    return {
        "server": {"log_level": "warning"},
        "vllm": {"url": upstream_url, "model": MODEL},
        "embeddings": {"backend": backend},
        "rag": {
            "store": {"path": store_path},
            "collections": {
                COLLECTION: {
                    "description": "Acme help centre: warranty, care, delivery, returns per product",
                    "top_k": 4,
                    "score_threshold": 0.2,
                }
            },
        },
        "intents": INTENTS,
        "policies": {
            RULES_POLICY: {
                "description": "Keyword, metadata and regex rules: nothing is embedded",
                "rules": [
                    {
                        "name": "realtime",
                        "when": {"header": {"name": "x-latency-class", "equals": "realtime"}},
                        "target": {"base": True, "caps": {"max_tokens": 64}},
                    },
                    {
                        "name": "letters",
                        "when": {"keywords": ["letter", "memo", "notice", "contract"]},
                        "target": {"base": True, "system_prompt": "Write in a formal register."},
                    },
                    {
                        "name": "vip",
                        "when": {"metadata": {"key": "tier", "in": ["gold", "platinum"]}},
                        "target": {"base": True, "system_prompt": base_prompt + " The customer is a VIP."},
                    },
                    {"name": "long-threads", "when": {"messages": {"min": 12}}, "target": "base"},
                    {
                        "name": "orders",
                        "when": {
                            "all": [{"metadata": {"key": "channel", "equals": "chat"}}, {"regex": r"\border\s+\d+"}]
                        },
                        "target": {"base": True, "system_prompt": base_prompt + " Questions are about orders."},
                    },
                ],
                "default": "base",
            },
            SEMANTIC_POLICY: {
                "description": "Intents first, like examples/demo.yaml's support desk (every target the base model)",
                "rules": [
                    {
                        "name": "realtime",
                        "when": {"header": {"name": "x-latency-class", "equals": "realtime"}},
                        "target": {"base": True, "caps": {"max_tokens": 64}},
                    },
                    {
                        "name": "product-facts",
                        "when": {"intent": "product-facts"},
                        "target": {"base": True, "system_prompt": base_prompt + " Quote the handbook."},
                    },
                    {
                        "name": "formal-writing",
                        "when": {"any": [{"intent": "formal-writing"}, {"keywords": ["letter", "memo", "notice"]}]},
                        "target": {"base": True, "system_prompt": "Write in a formal register."},
                    },
                    {
                        "name": "order-status",
                        "when": {"intent": "order-status"},
                        "target": {"base": True, "system_prompt": base_prompt + " Questions are about orders."},
                    },
                    {"name": "small-talk", "when": {"intent": "small-talk"}, "target": {"base": True}},
                    {
                        "name": "unrecognised",
                        "when": {"intent": "abstain"},
                        "target": {"base": True, "system_prompt": base_prompt, "caps": {"max_tokens": 256}},
                    },
                ],
                "default": "base",
            },
            RAG_POLICY: {
                "description": "Every question answered from the knowledge base by the base model",
                "rules": [
                    {"name": "knowledge-base", "target": {"rag": {"collection": COLLECTION, "generator": "base"}}}
                ],
                "default": "base",
            },
        },
    }
