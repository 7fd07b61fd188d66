"""Parts of `bench/gpu_stream.py` (real-time RAIN on one GPU), one job each:

run.py           the run's time budget per section, its JSON, device clocks and memory counters
build.py         random full-size (or --tiny) networks, the stream config, reference, tick states and noise
sections.py      environment, ceilings, cost of a tick, the engine (RainStream and the one tick), the check
rows.py          the table's rows: one tick configuration each, timed whole and by stage; memory
authors.py       the authors' UNet3D timed in a subprocess (`authors_unet.py`, a plain script)
table.py         the summary table
"""
