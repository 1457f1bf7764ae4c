"""Training the replacement network: recipes.py (one per loss) on core.py (the loop every loss shares).

Kept empty of imports: `streamline --help` reads training/settings.py and must not load torch.
"""
