"""`python -m codelm ...`, which is also how torchrun launches it: `torchrun --nproc_per_node 2 -m codelm pretrain
...`."""

from codelm.cli import main

main()
