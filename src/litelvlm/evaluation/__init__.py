"""Evaluation of referring segmentation: metrics, protocols, the evaluation loop and its reports."""
