"""What an `AIProcessor` (model.py) is composed of, one job per module:

- `stage`: the process thread — newest captured frame → model → overlay → latest-value slot;
- `ticker`: the clock thread — one tick every 1/TARGET_FPS into a short ring viewers read (in
  camera mode no clock: the process thread publishes each result into the ring);
- `encoder_pool`, `encoders`: each tick encoded once per codec in use, for every viewer;
- `fanout`: each processing result handed to the event loop and its listeners;
- `overlay`: what is drawn on frames; `frames`: the values passed between them.
"""
