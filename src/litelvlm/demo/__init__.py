"""`litelvlm demo`: a web page to see what pruning keeps and what mask comes out (engine.py: the computation,
app.py: the Gradio page, examples.py: example images drawn by the project)."""

from .engine import DemoEngine, RunResult, check_upload, parse_expressions

__all__ = ["DemoEngine", "RunResult", "check_upload", "parse_expressions"]
