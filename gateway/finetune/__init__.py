"""From a training file to a served route: check a chat fine-tuning file, count its tokens, estimate what
training costs (an OpenAI fine-tune, or a LoRA adapter on the base model's GPUs), and plan routes by cost.

May import: ``gateway.config``, ``gateway.errors``, ``gateway.adapters``, ``gateway.accounting``.
"""
