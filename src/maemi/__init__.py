"""MAEMI: Multimodal Assistant for Electron Micrograph Images.

A small vision-language model that a lab trains and runs on its own hardware (Srinivas et al., ICML 2024 workshop,
"Foundational Model for Electron Micrograph Analysis: Instruction-Tuning Small-Scale Language-and-Vision Assistant
for Enterprise Adoption").
"""

__version__ = "0.1.0"
