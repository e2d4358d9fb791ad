"""Flower glue: the ClientApp, the ServerApp main, and the engines that run them."""
