"""The media stage: fetch (under the address policy, caps and a deadline) and decode image/audio/video references on CPU workers."""
