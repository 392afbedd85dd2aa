"""A tiny random Llama written the way Hugging Face and llama.cpp store it, plus an independent
numpy forward pass in Hugging Face's conventions (rotate-half RoPE) to check intake against."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

CONFIG = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 96,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300,
    "max_position_embeddings": 128, "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
    "bos_token_id": 1, "eos_token_id": 2,
}
CORPUS = ["The quick brown fox jumps over the lazy dog. 0123456789 " * 4, "Hello, world! Paris is in France."]


def random_weights(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = d // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd
    w = {"model.embed_tokens.weight": rng.normal(0, 0.5, (v, d)), "model.norm.weight": 1 + rng.normal(0, 0.1, d)}
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = rng.normal(0, 0.2, (v, d))
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w |= {
            p + "input_layernorm.weight": 1 + rng.normal(0, 0.1, d),
            p + "self_attn.q_proj.weight": rng.normal(0, 0.2, (d, d)),
            p + "self_attn.k_proj.weight": rng.normal(0, 0.2, (kv, d)),
            p + "self_attn.v_proj.weight": rng.normal(0, 0.2, (kv, d)),
            p + "self_attn.o_proj.weight": rng.normal(0, 0.2, (d, d)),
            p + "post_attention_layernorm.weight": 1 + rng.normal(0, 0.1, d),
            p + "mlp.gate_proj.weight": rng.normal(0, 0.2, (f, d)),
            p + "mlp.up_proj.weight": rng.normal(0, 0.2, (f, d)),
            p + "mlp.down_proj.weight": rng.normal(0, 0.2, (d, f)),
        }
    return {k: x.astype(np.float32) for k, x in w.items()}


def train_tokenizer(vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<unk>", "<|im_start|>", "<|im_end|>"], show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def write_bf16_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """safetensors with BF16 data (numpy has no bf16, so the test writes the format by hand)."""
    header, blobs, offset = {}, [], 0
    for name, value in tensors.items():
        bits = value.astype(np.float32).view(np.uint32)
        blob = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2").tobytes()  # round to nearest even
        header[name] = {"dtype": "BF16", "shape": list(value.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def bf16_round(x: np.ndarray) -> np.ndarray:
    bits = x.astype(np.float32).view(np.uint32)
    return (((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)


def write_hf_folder(folder: Path, cfg: dict = CONFIG, seed: int = 0, bf16: bool = False) -> dict[str, np.ndarray]:
    """Write config.json, model.safetensors and tokenizer.json; return the weights as stored."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = random_weights(cfg, seed)
    (folder / "config.json").write_text(json.dumps(cfg))
    if bf16:
        write_bf16_safetensors(folder / "model.safetensors", weights)
        weights = {k: bf16_round(v) for k, v in weights.items()}
    else:
        save_file(weights, str(folder / "model.safetensors"))
    train_tokenizer(cfg["vocab_size"]).save(str(folder / "tokenizer.json"))
    template = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, "add_bos_token": False}))
    return weights


def hf_forward(weights: dict[str, np.ndarray], cfg: dict, ids: list[int]) -> np.ndarray:
    """Logits of every position, computed the way transformers' LlamaForCausalLM does (float64)."""
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    d, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, n, eps = d // nh, len(ids), cfg["rms_norm_eps"]
    inv = 1.0 / cfg["rope_theta"] ** (np.arange(0, hd, 2) / hd)
    ang = np.concatenate([np.outer(np.arange(n), inv)] * 2, axis=-1)  # (n, hd): rotate-half layout
    cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]

    def rotate_half(t):
        return np.concatenate([-t[..., hd // 2 :], t[..., : hd // 2]], axis=-1)

    def norm(t, g):
        return t / np.sqrt((t * t).mean(-1, keepdims=True) + eps) * g

    x = w["model.embed_tokens.weight"][ids]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = norm(x, w[p + "input_layernorm.weight"])
        q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(n, nh, hd)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(n, nkv, hd)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(n, nkv, hd)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
        s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        p_att = np.exp(s - s.max(-1, keepdims=True))
        p_att /= p_att.sum(-1, keepdims=True)
        o = np.einsum("hqk,khd->qhd", p_att, v).reshape(n, d)
        x = x + o @ w[p + "self_attn.o_proj.weight"].T
        h = norm(x, w[p + "post_attention_layernorm.weight"])
        g = h @ w[p + "mlp.gate_proj.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
    x = norm(x, w["model.norm.weight"])
    return x @ w.get("lm_head.weight", w["model.embed_tokens.weight"]).T


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of Q/K rows (rotate-half -> adjacent pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: Path, weights: dict[str, np.ndarray], cfg: dict, tokenizer_json: dict, arch: str = "llama",
               qtype=None, chat_template: str | None = None) -> None:
    """The same model as llama.cpp's converter would write it (Q/K permuted), optionally quantised."""
    import gguf

    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(nh)
    writer.add_head_count_kv(nkv)
    writer.add_rope_freq_base(cfg["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_vocab_size(cfg["vocab_size"])
    model = tokenizer_json["model"]
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list([t for t, _ in vocab])
    special = {t["content"] for t in tokenizer_json["added_tokens"]}
    writer.add_token_types([3 if t in special else 1 for t, _ in vocab])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model["merges"]])
    writer.add_bos_token_id(cfg["bos_token_id"])
    writer.add_eos_token_id(cfg["eos_token_id"])
    if chat_template:
        writer.add_chat_template(chat_template)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    parts = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name, value in weights.items():
        if name in names:
            target = names[name]
        else:
            _, _, layer, *rest = name.split(".")
            part = ".".join(rest[:-1])
            target = f"blk.{layer}.{parts[part]}.weight"
            if part == "self_attn.q_proj":
                value = llama_cpp_permute(value, nh)
            elif part == "self_attn.k_proj":
                value = llama_cpp_permute(value, nkv)
        if qtype is not None and value.ndim == 2:
            data = gguf.quants.quantize(value, qtype)
            writer.add_tensor(target, data, raw_shape=data.shape, raw_dtype=qtype)
        else:
            writer.add_tensor(target, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
