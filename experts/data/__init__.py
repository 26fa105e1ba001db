"""Data shipped or read offline: the Fashion-MNIST reader and the ImageNet labels."""
