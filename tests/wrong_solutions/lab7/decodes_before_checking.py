# ruff: noqa: F821, F704, E501, B904 - one notebook cell: names come from earlier cells
# Mistake: The tensor is decoded with tf.make_ndarray first and its shape checked afterwards: the checks are all there, but in the wrong order, so the declared size is allocated (and short content padded) before any check runs.
# Replaces: prediction-service
# Loses points in: test-bad-requests-status-codes
# Message names: not padded
class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, batcher, model_name=MODEL_NAME, version=MODEL_VERSION, signature_defs=None):
        self.batcher = batcher
        self.model_name = model_name
        self.version = version
        self.signature_defs = signature_defs if signature_defs is not None else SIGNATURE_DEFS

    async def _check_model_spec(self, spec, context) -> str:
        # Abort with NOT_FOUND / FAILED_PRECONDITION, else return the signature name used.
        ### BEGIN SOLUTION
        wants_version = spec.HasField("version")
        if spec.name != self.model_name or (wants_version and spec.version.value != self.version):
            wanted = (f"Specific({clip(spec.name)}, {spec.version.value})" if wants_version
                      else f"Latest({clip(spec.name)})")
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {wanted}")
        signature = spec.signature_name or "serving_default"
        if signature not in self.signature_defs:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f'Serving signature key "{clip(signature)}" not found.')
        return signature
        ### END SOLUTION

    async def _features_from(self, request, context) -> np.ndarray:
        # Validate request.inputs and return the [batch, N_FEATURES] float32 array.
        ### BEGIN SOLUTION
        unknown = sorted(set(request.inputs) - {SIGNATURE_INPUT})
        if unknown:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"input tensor alias not found in signature: {clip(', '.join(unknown))}. "
                                f"Inputs expected to be in the set {{{SIGNATURE_INPUT}}}.")
        if SIGNATURE_INPUT not in request.inputs:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"Missing input '{SIGNATURE_INPUT}': send a DT_FLOAT tensor of shape "
                                f"[batch, {N_FEATURES}] ({', '.join(FEATURES)}).")
        tensor = request.inputs[SIGNATURE_INPUT]
        if tensor.dtype != types_pb2.DT_FLOAT:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"Input '{SIGNATURE_INPUT}' must be DT_FLOAT, got {dtype_name(tensor.dtype)}.")
        try:
            features = tf.make_ndarray(tensor)  # decode first, then look at what we got
        except (ValueError, TypeError) as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Input '{SIGNATURE_INPUT}': {clip(error)}")
        if features.ndim != 2 or features.shape[1] != N_FEATURES or not 1 <= len(features) <= MAX_ROWS_PER_REQUEST:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"Input '{SIGNATURE_INPUT}' must have shape [batch, {N_FEATURES}] with "
                                f"1 <= batch <= {MAX_ROWS_PER_REQUEST}, got {clip(list(features.shape))}.")
        return features.astype(np.float32)
        ### END SOLUTION

    async def Predict(self, request, context):
        ### BEGIN SOLUTION
        signature = await self._check_model_spec(request.model_spec, context)
        features = await self._features_from(request, context)
        probabilities = await predict_or_abort(self.batcher, features, context)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.model_name
        response.model_spec.version.value = self.version
        response.model_spec.signature_name = signature
        response.outputs[SIGNATURE_OUTPUT].CopyFrom(
            tf.make_tensor_proto(np.asarray(probabilities, dtype=np.float32)))
        return response
        ### END SOLUTION

    async def GetModelMetadata(self, request, context):
        ### BEGIN SOLUTION
        await self._check_model_spec(request.model_spec, context)
        if not request.metadata_field:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != "signature_def":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"Metadata field {field} is not supported")
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature_def in self.signature_defs.items():
            signature_map.signature_def[name].CopyFrom(signature_def)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = self.model_name
        response.model_spec.version.value = self.version
        response.metadata["signature_def"].Pack(signature_map)
        return response
        ### END SOLUTION
