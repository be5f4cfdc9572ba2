"""Publishing a run to the Hugging Face Hub: what is uploaded, its model card, access checks and the push."""
