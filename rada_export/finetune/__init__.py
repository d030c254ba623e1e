"""Fine-tuning the image encoder together with the RAda head (RAda-FT)."""
