"""Evaluation: a policy's greedy answers on a split scored with `rewards` (geometry, answers, text, the
encoder-reliance gap), 3D-CQA multiple choice, and the pictures that show an answer over its cloud and image."""
