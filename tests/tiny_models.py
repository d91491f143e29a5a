"""Tiny model configs for tests: a few layers, a few dozen dimensions, real tokenizer vocabularies."""

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_VOCAB = 30522

TINY_BERT = {"model_type": "bert", "vocab_size": MINILM_VOCAB, "hidden_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}
TINY_OPT = {"model_type": "opt", "vocab_size": MINILM_VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "ffn_dim": 64,
            "num_attention_heads": 2, "word_embed_proj_dim": 32, "max_position_embeddings": 64, "pad_token_id": 0,
            "bos_token_id": 101, "eos_token_id": 102}
TINY_VIT = {"model_type": "vit", "image_size": 8, "patch_size": 2, "num_channels": 1, "hidden_size": 32,
            "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
TINY_RESNET = {"model_type": "resnet", "num_channels": 1, "embedding_size": 16, "hidden_sizes": [16, 32],
               "depths": [1, 1], "layer_type": "basic", "downsample_in_first_stage": False}
TINY_GPT2 = {"model_type": "gpt2", "vocab_size": MINILM_VOCAB, "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64,
             "bos_token_id": 101, "eos_token_id": 102}
TINY_LLAMA = {"model_type": "llama", "vocab_size": MINILM_VOCAB, "hidden_size": 32, "num_hidden_layers": 2,
              "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64,
              "pad_token_id": 0, "bos_token_id": 101, "eos_token_id": 102}
