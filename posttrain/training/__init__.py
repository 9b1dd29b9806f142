"""What every training recipe shares: the loop skeleton (`loop.py`), the optimizer and its step
(`optim.py`), the data order (`order.py`) and the model's training mode (`modes.py`)."""
