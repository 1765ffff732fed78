#!/usr/bin/env python3
"""Build a tiny, random, fully local Llama model that vLLM (CPU) can serve.

    python make_model.py OUT_DIR

Writes a Hugging Face style directory (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json, chat template, generation_config.json)
without touching any model hub. Deterministic: the tokenizer corpus is
generated from a fixed seed, BPE training runs single-threaded and the weights
come from torch.manual_seed(0), so two runs give byte-identical files.

Shape: vocab 2048 (byte-level BPE), hidden 128, 4 heads (head_dim 32, which
vLLM's CPU attention backend supports), 2 layers, intermediate 256.
The weights are random: the text is gibberish, but token counts, timings and
the HTTP/metrics surface are those of a real vLLM.
"""
import os
import sys

# Before importing tokenizers/torch: single-threaded, deterministic, offline.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json
import random
import shutil
import tempfile

VOCAB = 2048
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"

# Simple role-tagged chat format; `add_generation_prompt` opens the assistant turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

WORDS = (
    "the a an of to in and or is are was be it that this for on with as by at from not but "
    "model token request server stream latency prefill decode cache batch queue engine kernel "
    "process thread socket event trace metric span counter histogram gauge label value time "
    "first last next byte chunk data json http chat completion prompt user system assistant "
    "hello world say tell me about how what why when where who which one two three four five "
    "six seven eight nine ten zero red green blue fast slow small large tiny random text word "
    "number list count write read send receive open close start stop run wait done ok yes no"
).split()


def corpus(seed: int = 1234, lines: int = 4000):
    rng = random.Random(seed)
    punct = [".", ",", "!", "?", ":", ";", " -", ""]
    for _ in range(lines):
        n = rng.randint(3, 16)
        words = []
        for _ in range(n):
            r = rng.random()
            if r < 0.08:
                words.append(str(rng.randint(0, 99999)))
            elif r < 0.12:
                words.append(rng.choice(WORDS).capitalize())
            else:
                words.append(rng.choice(WORDS))
        yield " ".join(words) + rng.choice(punct)
    # Make sure every printable ASCII char is seen in context too.
    yield "".join(chr(c) for c in range(32, 127))
    yield '{"role": "user", "content": "Hello!"} <tag attr=\'x\'>[1, 2, 3]</tag> a_b-c/d\\e\tf'


def build_tokenizer(out_dir: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        min_frequency=1,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus()), trainer=trainer)
    if tok.get_vocab_size() != VOCAB:
        # Pad with unused tokens so that vocab size == embedding rows exactly.
        have = tok.get_vocab_size()
        tok.add_tokens([f"<|unused{i}|>" for i in range(VOCAB - have)])
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=SPECIALS[4:],
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def build_model(out_dir: str, tok):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=32,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=tok.convert_tokens_to_ids(BOS),
        eos_token_id=tok.convert_tokens_to_ids(EOS),
        pad_token_id=tok.convert_tokens_to_ids(PAD),
    )
    cfg.dtype = "float32"
    model = LlamaForCausalLM(cfg).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    return model


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_model.py OUT_DIR")
    out = os.path.abspath(sys.argv[1])
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    # Build in a temp dir beside OUT_DIR, then rename: OUT_DIR is complete or absent.
    tmp = tempfile.mkdtemp(prefix=".tiny-model-", dir=parent)
    try:
        tok = build_tokenizer(tmp)
        build_model(tmp, tok)
        # Sanity: the chat template renders and round-trips through the tokenizer.
        from transformers import AutoTokenizer

        t2 = AutoTokenizer.from_pretrained(tmp)
        ids = t2.apply_chat_template([{"role": "user", "content": "Hello!"}], add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        assert len(ids) > 3, ids
        with open(os.path.join(tmp, "inferscope-tiny-model.json"), "w") as f:
            json.dump({"generator": "tests/vllm/make_model.py", "vocab": VOCAB, "hidden": 128,
                       "heads": 4, "layers": 2, "intermediate": 256, "seed": 0}, f, indent=1, sort_keys=True)
            f.write("\n")
        if os.path.exists(out):
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(out)


if __name__ == "__main__":
    main()
