"""qffs: Quantization Framework for Fast Spiking Neural Networks."""
__version__ = "0.1.0"
