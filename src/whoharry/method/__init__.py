"""The method itself, as pure tensor functions: the generic-label formula of Eldan & Russinovich (2023)
and the training objectives. Nothing here reads or writes files."""
