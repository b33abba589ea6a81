/**
 * The forward pass of a small fully connected network in plain TypeScript, on weights copied
 * out of TensorFlow.js after training: a prediction on the scheduler's path must not wait on
 * tfjs (its per-op dispatch costs more than this whole network) nor allocate.
 */
export class DenseStack {
  /** Per layer: kernel [in × out] row-major (tfjs's dense kernel layout) and bias [out]. */
  readonly kernels: Float32Array[];
  readonly biases: Float32Array[];
  /** Activations of each hidden layer, reused across calls. */
  private readonly hidden: Float64Array[];

  /** `widths` = [inputs, hidden…, outputs]; ReLU after every layer but the last. */
  constructor(readonly widths: readonly number[]) {
    if (widths.length < 2) throw new RangeError('a dense stack needs at least an input and an output width');
    this.kernels = [];
    this.biases = [];
    this.hidden = [];
    for (let l = 0; l + 1 < widths.length; l++) {
      this.kernels.push(new Float32Array(widths[l]! * widths[l + 1]!));
      this.biases.push(new Float32Array(widths[l + 1]!));
      if (l + 2 < widths.length) this.hidden.push(new Float64Array(widths[l + 1]!));
    }
  }

  /** out[0 .. outputs) = network(input). */
  forward(input: Float32Array, out: Float64Array): void {
    const layers = this.kernels.length;
    let x: Float32Array | Float64Array = input;
    for (let l = 0; l < layers; l++) {
      const last = l === layers - 1;
      const y = last ? out : this.hidden[l]!;
      const w = this.kernels[l]!;
      const b = this.biases[l]!;
      const nIn = this.widths[l]!;
      const nOut = this.widths[l + 1]!;
      for (let j = 0; j < nOut; j++) y[j] = b[j]!;
      for (let i = 0; i < nIn; i++) {
        const xi = x[i]!;
        if (xi === 0) continue; // one-hot and hashed inputs are mostly zeros
        const row = i * nOut;
        for (let j = 0; j < nOut; j++) y[j]! += xi * w[row + j]!;
      }
      if (!last) for (let j = 0; j < nOut; j++) if (!(y[j]! > 0)) y[j] = 0;
      x = y;
    }
  }
}
