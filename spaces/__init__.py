"""Not a package: this folder holds the code both Spaces share (`chat_runtime`, `space_deploy`).

`spaces` is the import name of Hugging Face's ZeroGPU helper, which Gradio imports at start-up.
Without this file, running Python from the repository root would make this folder importable as
a namespace package named `spaces`; with it, such an import fails cleanly, as if it were absent.
"""

raise ImportError("`spaces` here is Finch's folder, not Hugging Face's `spaces` package; import chat_runtime")
