"""Installs the stand-in Hub (tests/stand_in_hub.py) in a subprocess when GPT2REPRO_STAND_IN_HUB names its folder."""

import os
import sys

if os.environ.get("GPT2REPRO_STAND_IN_HUB"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from stand_in_hub import install_from_environment

    install_from_environment()
