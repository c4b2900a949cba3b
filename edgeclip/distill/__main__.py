"""``torchrun --nproc_per_node N -m edgeclip.distill --config FILE.toml``."""
from .cli import main

main()
