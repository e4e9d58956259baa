"""Fine-tuning a CrossEncoder reranker with sentence-transformers' CrossEncoderTrainer on Ray Train."""
