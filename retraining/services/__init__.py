import os

# Before any submodule loads LightGBM (and libgomp): see recommendations/ranking.py.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
