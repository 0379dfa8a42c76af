"""Foresight: a VLM thinks about an image out loud while LTX-Video renders what happens next."""
