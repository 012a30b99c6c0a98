"""The canonical operation vocabulary every capture maps onto, so that a rule is written once.

`nn.ReLU`, `F.relu`, `torch.relu`, `x.relu()`, `x.relu_()` and `aten.relu_.default` all become op "relu"
(the in-place ones with `inplace=True`); `nn.Conv2d`, `F.conv2d` and `aten.conv2d.default` all become "conv".
Pure string tables: no torch import.
"""

from __future__ import annotations

# --- categories -----------------------------------------------------------------------------------------------

CONV = "conv"
CONV_TRANSPOSE = "conv_transpose"
LINEAR = "linear"
BILINEAR = "bilinear"
EMBEDDING = "embedding"
RNN = "rnn"  # RNN, LSTM, GRU and their cells
ATTENTION = "attention"  # nn.MultiheadAttention, F.scaled_dot_product_attention
BATCH_NORM = "batch_norm"
LAYER_NORM = "layer_norm"
GROUP_NORM = "group_norm"
INSTANCE_NORM = "instance_norm"
RMS_NORM = "rms_norm"
LOCAL_RESPONSE_NORM = "local_response_norm"
DROPOUT = "dropout"
ADD = "add"
SUB = "sub"
MUL = "mul"
DIV = "div"
MATMUL = "matmul"
CAT = "cat"
STACK = "stack"
RESHAPE = "reshape"
GETITEM = "getitem"
IDENTITY = "identity"
POOL = "pool"
UPSAMPLE = "upsample"
PAD = "pad"
SOFTMAX = "softmax"
MEAN = "mean"
SUM = "sum"
OPAQUE = "opaque"  # a module the capture cannot see into (fx leaves such as nn.TransformerEncoderLayer)

# Activations, named as the op itself.
RELU_FAMILY = frozenset({"relu", "leaky_relu", "prelu", "rrelu"})  # f(0)=0 and positively homogeneous
ACTIVATIONS = RELU_FAMILY | frozenset(
    {
        "relu6", "elu", "selu", "celu", "gelu", "silu", "mish", "sigmoid", "hardsigmoid", "tanh", "hardtanh",
        "softplus", "softsign", "hardswish", "logsigmoid", "tanhshrink", "softshrink", "hardshrink", "threshold",
        "glu",
    }
)
# Activations whose gain calls for He init; the rest of ACTIVATIONS (tanh, sigmoid, ...) call for Xavier.
RELU_LIKE = RELU_FAMILY | frozenset({"relu6", "elu", "selu", "celu", "gelu", "silu", "mish", "hardswish"})

NORMS = frozenset({BATCH_NORM, LAYER_NORM, GROUP_NORM, INSTANCE_NORM, RMS_NORM, LOCAL_RESPONSE_NORM})
WEIGHT_LAYERS = frozenset({CONV, CONV_TRANSPOSE, LINEAR, BILINEAR, EMBEDDING, RNN, ATTENTION})
# Ops a value passes through unchanged in meaning: rules look through them when following edges.
TRANSPARENT = frozenset({RESHAPE, GETITEM, IDENTITY, "contiguous", "clone", "to", "type_as", "detach"})

# --- names -> ops -------------------------------------------------------------------------------------------------

_NAME_TO_OP: dict[str, str] = {
    # weight layers
    "conv1d": CONV, "conv2d": CONV, "conv3d": CONV, "convolution": CONV, "_convolution": CONV,
    "conv_transpose1d": CONV_TRANSPOSE, "conv_transpose2d": CONV_TRANSPOSE, "conv_transpose3d": CONV_TRANSPOSE,
    "linear": LINEAR, "addmm": LINEAR, "bilinear": BILINEAR, "embedding": EMBEDDING, "embedding_bag": EMBEDDING,
    "lstm": RNN, "gru": RNN, "rnn_tanh": RNN, "rnn_relu": RNN, "lstm_cell": RNN, "gru_cell": RNN,
    "scaled_dot_product_attention": ATTENTION, "multi_head_attention_forward": ATTENTION,
    # norms
    "batch_norm": BATCH_NORM, "native_batch_norm": BATCH_NORM, "_native_batch_norm_legit": BATCH_NORM,
    "_native_batch_norm_legit_no_training": BATCH_NORM, "_batch_norm_impl_index": BATCH_NORM,
    "_native_batch_norm_legit_functional": BATCH_NORM,
    "layer_norm": LAYER_NORM, "native_layer_norm": LAYER_NORM, "group_norm": GROUP_NORM,
    "native_group_norm": GROUP_NORM, "instance_norm": INSTANCE_NORM, "rms_norm": RMS_NORM,
    "local_response_norm": LOCAL_RESPONSE_NORM,
    # dropout
    "dropout": DROPOUT, "dropout1d": DROPOUT, "dropout2d": DROPOUT, "dropout3d": DROPOUT,
    "feature_dropout": DROPOUT, "alpha_dropout": DROPOUT, "feature_alpha_dropout": DROPOUT,
    "native_dropout": DROPOUT,
    # arithmetic
    "add": ADD, "iadd": ADD, "radd": ADD, "sub": SUB, "isub": SUB, "rsub": SUB, "mul": MUL, "imul": MUL,
    "rmul": MUL, "div": DIV, "truediv": DIV, "itruediv": DIV, "rtruediv": DIV, "true_divide": DIV,
    "matmul": MATMUL, "mm": MATMUL, "bmm": MATMUL, "einsum": MATMUL, "baddbmm": MATMUL,
    "grouped_mm": MATMUL, "_grouped_mm": MATMUL, "grouped_mm_fallback": MATMUL,
    "cat": CAT, "concat": CAT, "concatenate": CAT, "stack": STACK,
    # shape
    "view": RESHAPE, "reshape": RESHAPE, "flatten": RESHAPE, "unflatten": RESHAPE, "squeeze": RESHAPE,
    "unsqueeze": RESHAPE, "permute": RESHAPE, "transpose": RESHAPE, "t": RESHAPE, "view_as": RESHAPE,
    "reshape_as": RESHAPE, "expand": RESHAPE, "expand_as": RESHAPE, "movedim": RESHAPE, "_unsafe_view": RESHAPE,
    "T": RESHAPE, "mT": RESHAPE, "H": RESHAPE, "mH": RESHAPE, "numpy_T": RESHAPE, "adjoint": RESHAPE,
    "swapaxes": RESHAPE, "swapdims": RESHAPE,
    "getitem": GETITEM, "identity": IDENTITY, "alias": IDENTITY, "contiguous": "contiguous", "clone": "clone",
    "to": "to", "float": "to", "half": "to", "bfloat16": "to", "double": "to", "type": "to", "type_as": "type_as",
    "_to_copy": "to", "detach": "detach",
    # pooling and resampling
    "max_pool1d": POOL, "max_pool2d": POOL, "max_pool3d": POOL, "avg_pool1d": POOL, "avg_pool2d": POOL,
    "avg_pool3d": POOL, "adaptive_avg_pool1d": POOL, "adaptive_avg_pool2d": POOL, "adaptive_avg_pool3d": POOL,
    "adaptive_max_pool1d": POOL, "adaptive_max_pool2d": POOL, "adaptive_max_pool3d": POOL,
    "max_pool2d_with_indices": POOL, "_adaptive_avg_pool2d": POOL, "lp_pool2d": POOL,
    "interpolate": UPSAMPLE, "upsample": UPSAMPLE, "upsample_nearest2d": UPSAMPLE, "upsample_bilinear2d": UPSAMPLE,
    "pixel_shuffle": UPSAMPLE, "pad": PAD, "constant_pad_nd": PAD,
    "softmax": SOFTMAX, "log_softmax": SOFTMAX, "_softmax": SOFTMAX, "_log_softmax": SOFTMAX,
    "mean": MEAN, "sum": SUM,
}
_NAME_TO_OP.update({name: name for name in ACTIVATIONS})
_NAME_TO_OP.update({"swish": "silu", "hardswish": "hardswish", "prelu": "prelu", "_prelu_kernel": "prelu"})

# torch.nn module class names -> ops (matched on the class and its torch.nn bases).
_MODULE_TO_OP: dict[str, str] = {
    "Conv1d": CONV, "Conv2d": CONV, "Conv3d": CONV, "LazyConv1d": CONV, "LazyConv2d": CONV, "LazyConv3d": CONV,
    "ConvTranspose1d": CONV_TRANSPOSE, "ConvTranspose2d": CONV_TRANSPOSE, "ConvTranspose3d": CONV_TRANSPOSE,
    "Linear": LINEAR, "LazyLinear": LINEAR, "NonDynamicallyQuantizableLinear": LINEAR, "Bilinear": BILINEAR,
    "Embedding": EMBEDDING, "EmbeddingBag": EMBEDDING,
    "RNN": RNN, "LSTM": RNN, "GRU": RNN, "RNNCell": RNN, "LSTMCell": RNN, "GRUCell": RNN,
    "MultiheadAttention": ATTENTION,
    "BatchNorm1d": BATCH_NORM, "BatchNorm2d": BATCH_NORM, "BatchNorm3d": BATCH_NORM, "SyncBatchNorm": BATCH_NORM,
    "LazyBatchNorm1d": BATCH_NORM, "LazyBatchNorm2d": BATCH_NORM, "LazyBatchNorm3d": BATCH_NORM,
    "LayerNorm": LAYER_NORM, "GroupNorm": GROUP_NORM, "InstanceNorm1d": INSTANCE_NORM,
    "InstanceNorm2d": INSTANCE_NORM, "InstanceNorm3d": INSTANCE_NORM, "RMSNorm": RMS_NORM,
    "LocalResponseNorm": LOCAL_RESPONSE_NORM,
    "Dropout": DROPOUT, "Dropout1d": DROPOUT, "Dropout2d": DROPOUT, "Dropout3d": DROPOUT,
    "AlphaDropout": DROPOUT, "FeatureAlphaDropout": DROPOUT,
    "ReLU": "relu", "ReLU6": "relu6", "LeakyReLU": "leaky_relu", "PReLU": "prelu", "RReLU": "rrelu", "ELU": "elu",
    "SELU": "selu", "CELU": "celu", "GELU": "gelu", "SiLU": "silu", "Mish": "mish", "Sigmoid": "sigmoid",
    "Hardsigmoid": "hardsigmoid", "Tanh": "tanh", "Hardtanh": "hardtanh", "Softplus": "softplus",
    "Softsign": "softsign", "Hardswish": "hardswish", "LogSigmoid": "logsigmoid", "Tanhshrink": "tanhshrink",
    "Softshrink": "softshrink", "Hardshrink": "hardshrink", "Threshold": "threshold", "GLU": "glu",
    "Softmax": SOFTMAX, "LogSoftmax": SOFTMAX, "Softmax2d": SOFTMAX,
    "Flatten": RESHAPE, "Unflatten": RESHAPE, "Identity": IDENTITY,
    "MaxPool1d": POOL, "MaxPool2d": POOL, "MaxPool3d": POOL, "AvgPool1d": POOL, "AvgPool2d": POOL,
    "AvgPool3d": POOL, "AdaptiveAvgPool1d": POOL, "AdaptiveAvgPool2d": POOL, "AdaptiveAvgPool3d": POOL,
    "AdaptiveMaxPool1d": POOL, "AdaptiveMaxPool2d": POOL, "AdaptiveMaxPool3d": POOL, "LPPool2d": POOL,
    "Upsample": UPSAMPLE, "UpsamplingNearest2d": UPSAMPLE, "UpsamplingBilinear2d": UPSAMPLE,
    "PixelShuffle": UPSAMPLE, "ZeroPad2d": PAD, "ConstantPad2d": PAD, "ReflectionPad2d": PAD,
    "ReplicationPad2d": PAD,
}

# Positional parameter names of the ops whose literal arguments rules read (functional and aten orders agree).
_POSITIONAL: dict[str, tuple[str, ...]] = {
    DROPOUT: ("input", "p", "training", "inplace"),
    "leaky_relu": ("input", "negative_slope", "inplace"),
    "elu": ("input", "alpha", "inplace"),
    "celu": ("input", "alpha", "inplace"),
    "hardtanh": ("input", "min_val", "max_val", "inplace"),
    "threshold": ("input", "threshold", "value", "inplace"),
    "softplus": ("input", "beta", "threshold"),
    "gelu": ("input", "approximate"),
    LAYER_NORM: ("input", "normalized_shape", "weight", "bias", "eps"),
    GROUP_NORM: ("input", "num_groups", "weight", "bias", "eps"),
    BATCH_NORM: ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"),
    CONV: ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    LINEAR: ("input", "weight", "bias"),
    SOFTMAX: ("input", "dim"),
    ADD: ("input", "other", "alpha"),
    MUL: ("input", "other"),
    DIV: ("input", "other"),
    CAT: ("tensors", "dim"),
    STACK: ("tensors", "dim"),
}

_INPLACE_DUNDERS = {"iadd", "isub", "imul", "itruediv"}


def op_for_name(name: str) -> tuple[str, bool]:
    """Map a function, method or aten op name to (op, in_place). Unknown names map to themselves."""
    parts = name.split(".")
    base = parts[1] if parts[0] == "aten" and len(parts) > 1 else parts[-1]
    if base.startswith("__") and base.endswith("__"):
        base = base.strip("_")
    inplace = False
    if base in _INPLACE_DUNDERS:
        inplace = True
    elif base.endswith("_") and not base.startswith("_") and base[:-1] in _NAME_TO_OP:
        base, inplace = base[:-1], True
    return _NAME_TO_OP.get(base, base), inplace


def op_for_module_class(class_names: list[str]) -> str | None:
    """The op of a torch.nn module, given the names of its class and its bases, nearest first."""
    for name in class_names:
        if name in _MODULE_TO_OP:
            return _MODULE_TO_OP[name]
    return None


def positional_names(op: str) -> tuple[str, ...]:
    return _POSITIONAL.get(op, ())


def is_activation(op: str) -> bool:
    return op in ACTIVATIONS
