"""MELD multimodal emotion recognition: preprocessing, data, training, inference."""
