import { closeSync, openSync, writeSync } from 'node:fs';
import onnxProto from 'onnx-proto';

const { onnx } = onnxProto;
type ITensorProto = onnxProto.onnx.ITensorProto;
type INodeProto = onnxProto.onnx.INodeProto;
type IValueInfoProto = onnxProto.onnx.IValueInfoProto;
type IAttributeProto = onnxProto.onnx.IAttributeProto;

export const DType = {
  float: onnx.TensorProto.DataType.FLOAT,
  uint8: onnx.TensorProto.DataType.UINT8,
  int32: onnx.TensorProto.DataType.INT32,
  int64: onnx.TensorProto.DataType.INT64,
  bool: onnx.TensorProto.DataType.BOOL,
} as const;
export type DTypeCode = (typeof DType)[keyof typeof DType];

/** A dimension is a fixed size or a symbolic name (dynamic axis). */
export type Dim = number | string;
export type AttrValue = number | string | number[] | { float: number } | { floats: number[] } | ITensorProto;

/**
 * Writes tensor payloads once into an external-data file that several graphs may reference
 * (the `fast` and `hf` flavours share one copy of the weights). Offsets are page aligned so
 * ONNX Runtime can map them.
 */
export class ExternalDataWriter {
  private readonly fd: number;
  private offset = 0;
  private static readonly ALIGN = 4096;
  private static readonly ZEROS = new Uint8Array(ExternalDataWriter.ALIGN);

  constructor(
    path: string,
    /** The file name as graphs refer to it, relative to the graph's folder. */
    readonly location: string,
  ) {
    this.fd = openSync(path, 'w');
  }

  /** Appends raw bytes and returns a tensor whose data lives in the external file. */
  add(name: string, dims: number[], dataType: DTypeCode, bytes: Uint8Array): ITensorProto {
    const pad = (ExternalDataWriter.ALIGN - (this.offset % ExternalDataWriter.ALIGN)) % ExternalDataWriter.ALIGN;
    if (pad > 0) {
      writeSync(this.fd, ExternalDataWriter.ZEROS, 0, pad);
      this.offset += pad;
    }
    const start = this.offset;
    let written = 0;
    while (written < bytes.byteLength) written += writeSync(this.fd, bytes, written, bytes.byteLength - written);
    this.offset += bytes.byteLength;
    return {
      name,
      dims,
      dataType,
      dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
      externalData: [
        { key: 'location', value: this.location },
        { key: 'offset', value: String(start) },
        { key: 'length', value: String(bytes.byteLength) },
      ],
    };
  }

  /** Another tensor over the bytes `of` points to: one copy on disk read under two shapes. */
  static view(of: ITensorProto, name: string, dims: number[]): ITensorProto {
    return { ...of, name, dims };
  }

  close(): void {
    closeSync(this.fd);
  }
}

export function tensorBytes(data: Float32Array | Int32Array | BigInt64Array): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

export function inlineTensor(name: string, dims: number[], data: Float32Array | Int32Array | BigInt64Array): ITensorProto {
  const dataType = data instanceof Float32Array ? DType.float : data instanceof Int32Array ? DType.int32 : DType.int64;
  return { name, dims, dataType, rawData: tensorBytes(data).slice() };
}

/**
 * A small ONNX graph builder: nodes are added in topological order, each `op` call returns
 * the names of its outputs so that model code reads like the computation it describes.
 */
export class GraphBuilder {
  private readonly nodes: INodeProto[] = [];
  private readonly initializers: ITensorProto[] = [];
  private readonly inputs: IValueInfoProto[] = [];
  private readonly outputs: IValueInfoProto[] = [];
  private readonly constants = new Map<string, string>();
  private counter = 0;

  constructor(private readonly name: string) {}

  input(name: string, dtype: DTypeCode, dims: Dim[]): string {
    this.inputs.push(valueInfo(name, dtype, dims));
    return name;
  }

  output(name: string, dtype: DTypeCode, dims: Dim[]): void {
    this.outputs.push(valueInfo(name, dtype, dims));
  }

  initializer(tensor: ITensorProto): string {
    this.initializers.push(tensor);
    return tensor.name as string;
  }

  /** Small constants are deduplicated by value so repeated shapes and scalars share one initializer. */
  constInt64(values: number[], scalar = false): string {
    const key = `i64:${scalar ? 's' : 'v'}:${values.join(',')}`;
    let name = this.constants.get(key);
    if (name === undefined) {
      name = `const_${this.constants.size}`;
      this.initializers.push(inlineTensor(name, scalar ? [] : [values.length], BigInt64Array.from(values.map(BigInt))));
      this.constants.set(key, name);
    }
    return name;
  }

  constFloat(values: number[], scalar = false): string {
    const key = `f32:${scalar ? 's' : 'v'}:${values.join(',')}`;
    let name = this.constants.get(key);
    if (name === undefined) {
      name = `const_${this.constants.size}`;
      this.initializers.push(inlineTensor(name, scalar ? [] : [values.length], Float32Array.from(values)));
      this.constants.set(key, name);
    }
    return name;
  }

  op(opType: string, inputs: string[], attrs: Record<string, AttrValue> = {}, opts: { outputs?: number | string[]; domain?: string; name?: string } = {}): string[] {
    const id = this.counter++;
    const outputs = Array.isArray(opts.outputs)
      ? opts.outputs
      : Array.from({ length: opts.outputs ?? 1 }, (_, k) => `${opts.name ?? opType}_${id}_out${k}`);
    this.nodes.push({
      opType,
      domain: opts.domain ?? '',
      name: `${opts.name ?? opType}_${id}`,
      input: inputs,
      output: outputs,
      attribute: Object.entries(attrs).map(([k, v]) => attribute(k, v)),
    });
    return outputs;
  }

  /** Single-output convenience form of `op`. */
  op1(opType: string, inputs: string[], attrs: Record<string, AttrValue> = {}, opts: { output?: string; domain?: string; name?: string } = {}): string {
    const o: { outputs?: string[]; domain?: string; name?: string } = { ...opts };
    if (opts.output !== undefined) o.outputs = [opts.output];
    return this.op(opType, inputs, attrs, o)[0] as string;
  }

  encode(opsets: Record<string, number>, metadata: Record<string, string> = {}): Uint8Array {
    const model = onnx.ModelProto.create({
      irVersion: 8,
      producerName: 'marginal',
      producerVersion: '0.1.0',
      opsetImport: Object.entries(opsets).map(([domain, version]) => ({ domain, version })),
      metadataProps: Object.entries(metadata).map(([key, value]) => ({ key, value })),
      graph: {
        name: this.name,
        node: this.nodes,
        initializer: this.initializers,
        input: this.inputs,
        output: this.outputs,
      },
    });
    return onnx.ModelProto.encode(model).finish();
  }
}

function valueInfo(name: string, elemType: DTypeCode, dims: Dim[]): IValueInfoProto {
  return {
    name,
    type: {
      tensorType: {
        elemType,
        shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
      },
    },
  };
}

function attribute(name: string, v: AttrValue): IAttributeProto {
  const T = onnx.AttributeProto.AttributeType;
  if (typeof v === 'number') {
    if (!Number.isInteger(v)) throw new Error(`attribute ${name}: use {float: x} for non-integer values`);
    return { name, type: T.INT, i: v };
  }
  if (typeof v === 'string') return { name, type: T.STRING, s: new TextEncoder().encode(v) };
  if (Array.isArray(v)) return { name, type: T.INTS, ints: v };
  if ('float' in v && typeof v.float === 'number') return { name, type: T.FLOAT, f: v.float };
  if ('floats' in v && Array.isArray(v.floats)) return { name, type: T.FLOATS, floats: v.floats };
  return { name, type: T.TENSOR, t: v as ITensorProto };
}
