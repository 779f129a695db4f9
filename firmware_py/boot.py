# boot.py: runs first on every reset, before main.py.
import gc

gc.collect()
