def example_inputs(batch_size, seq_len, device, dtype):
    return ()
