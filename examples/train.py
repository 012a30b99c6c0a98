"""Training loop for examples/faulty_cnn.py, with three mistakes `audit` finds without running it.

    audit examples/train.py

- gradients are clipped while the GradScaler still scales them (the threshold sees ~65536x the real norm);
- AdamW's weight decay also applies to the biases and BatchNorm weights;
- the classification loss has no label smoothing.
"""

import torch
import torch.nn as nn

from faulty_cnn import FaultyCNN


def train(loader, epochs: int = 10, device: str = "cuda") -> None:
    model = FaultyCNN().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=500)
    criterion = nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler(device)
    for _ in range(epochs):
        for images, labels in loader:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device, dtype=torch.float16):
                loss = criterion(model(images.to(device)), labels.to(device))
            scaler.scale(loss).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()


if __name__ == "__main__":
    train(loader=[])
