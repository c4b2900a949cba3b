"""Export (torch side): a dual encoder -> an edgeclip bundle of ONNX graphs (fp32/fp16/int8).

Entry points: :func:`edgeclip.export.pipeline.export_dual_encoder`, the ``edgeclip export``
command (:mod:`edgeclip.export.cli`), the Q/DQ lint (:mod:`edgeclip.export.qdq_lint`, onnx only).
"""
