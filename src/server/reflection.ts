import {
  create,
  createFileRegistry,
  type DescFile,
  type DescService,
  type FileRegistry,
  fromBinary,
  toBinary,
} from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema, FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import * as v1 from "../../gen/grpc/reflection/v1/reflection_pb.ts";
import * as v1alpha from "../../gen/grpc/reflection/v1alpha/reflection_pb.ts";

type Request = v1.ServerReflectionRequest;
type ResponseBody = Exclude<v1.ServerReflectionResponse["messageResponse"], { case: undefined }>;

/** gRPC status codes, as the reflection protocol reports them inside ErrorResponse. */
const INVALID_ARGUMENT = 3;
const NOT_FOUND = 5;

/**
 * gRPC server reflection (v1 and the v1alpha that older grpcurl and buf versions still ask for),
 * answered from the descriptors embedded in the generated code. With it, `buf curl` and `grpcurl`
 * list and call every service with no .proto files at hand. `extraFiles` are types that are not
 * part of any service but travel inside Any, such as the google.rpc error details.
 */
export function createReflectionServices(
  services: readonly DescService[],
  extraFiles: readonly DescFile[] = [],
) {
  const files = collectFiles([...services.map((s) => s.file), ...extraFiles]);
  const registry = createFileRegistry(create(FileDescriptorSetSchema, { file: files.map((f) => f.proto) }));
  const serialized = new Map<DescFile, Uint8Array>();
  const bytesOf = (file: DescFile) => {
    let bytes = serialized.get(file);
    if (bytes === undefined) {
      bytes = toBinary(FileDescriptorProtoSchema, file.proto);
      serialized.set(file, bytes);
    }
    return bytes;
  };
  const withDependencies = (file: DescFile): ResponseBody => ({
    case: "fileDescriptorResponse",
    value: create(v1.FileDescriptorResponseSchema, {
      fileDescriptorProto: collectFiles([file]).map(bytesOf),
    }),
  });
  const answer = (req: Request): ResponseBody => {
    const r = req.messageRequest;
    switch (r.case) {
      case "listServices":
        return {
          case: "listServicesResponse",
          value: create(v1.ListServiceResponseSchema, {
            service: services.map((s) => ({ name: s.typeName })),
          }),
        };
      case "fileByFilename": {
        const file = registry.getFile(r.value);
        return file ? withDependencies(file) : notFound(`file ${r.value} is not known`);
      }
      case "fileContainingSymbol": {
        const file = fileOfSymbol(registry, r.value);
        return file ? withDependencies(file) : notFound(`symbol ${r.value} is not known`);
      }
      case "fileContainingExtension": {
        const extendee = registry.getMessage(r.value.containingType);
        const ext = extendee && registry.getExtensionFor(extendee, r.value.extensionNumber);
        return ext
          ? withDependencies(ext.file)
          : notFound(`extension ${r.value.extensionNumber} of ${r.value.containingType} is not known`);
      }
      case "allExtensionNumbersOfType": {
        if (registry.getMessage(r.value) === undefined) return notFound(`type ${r.value} is not known`);
        const numbers: number[] = [];
        for (const desc of registry) {
          if (desc.kind === "extension" && desc.extendee.typeName === r.value) numbers.push(desc.number);
        }
        return {
          case: "allExtensionNumbersResponse",
          value: create(v1.ExtensionNumberResponseSchema, {
            baseTypeName: r.value,
            extensionNumber: numbers,
          }),
        };
      }
      default:
        return {
          case: "errorResponse",
          value: create(v1.ErrorResponseSchema, {
            errorCode: INVALID_ARGUMENT,
            errorMessage: "empty request",
          }),
        };
    }
  };

  const respond = (req: Request) =>
    create(v1.ServerReflectionResponseSchema, {
      validHost: req.host,
      originalRequest: req,
      messageResponse: answer(req),
    });

  const serverReflectionInfoV1: ServiceImpl<typeof v1.ServerReflection>["serverReflectionInfo"] =
    async function* (requests) {
      for await (const req of requests) yield respond(req);
    };
  // v1alpha is v1 under another package name with the same wire format, so a binary round trip
  // converts each message without a second implementation.
  const serverReflectionInfoV1alpha: ServiceImpl<typeof v1alpha.ServerReflection>["serverReflectionInfo"] =
    async function* (requests) {
      for await (const req of requests) {
        const asV1 = fromBinary(
          v1.ServerReflectionRequestSchema,
          toBinary(v1alpha.ServerReflectionRequestSchema, req),
        );
        yield fromBinary(
          v1alpha.ServerReflectionResponseSchema,
          toBinary(v1.ServerReflectionResponseSchema, respond(asV1)),
        );
      }
    };

  return {
    v1: [v1.ServerReflection, { serverReflectionInfo: serverReflectionInfoV1 }] as const,
    v1alpha: [v1alpha.ServerReflection, { serverReflectionInfo: serverReflectionInfoV1alpha }] as const,
  };
}

function notFound(message: string): ResponseBody {
  return {
    case: "errorResponse",
    value: create(v1.ErrorResponseSchema, { errorCode: NOT_FOUND, errorMessage: message }),
  };
}

function fileOfSymbol(registry: FileRegistry, symbol: string): DescFile | undefined {
  const name = symbol.replace(/^\./, "");
  const desc = registry.get(name);
  if (desc !== undefined && "file" in desc) return desc.file;
  // A method (pkg.Service.Method) or a field (pkg.Message.field): look up the parent.
  const parent = name.slice(0, name.lastIndexOf("."));
  const owner = parent ? registry.get(parent) : undefined;
  return owner !== undefined && "file" in owner ? owner.file : undefined;
}

/** The files and all their transitive dependencies, each once, dependencies first. */
function collectFiles(roots: readonly DescFile[]): DescFile[] {
  const out: DescFile[] = [];
  const seen = new Set<string>();
  const visit = (file: DescFile) => {
    if (seen.has(file.name)) return;
    seen.add(file.name);
    for (const dep of file.dependencies) visit(dep);
    out.push(file);
  };
  for (const root of roots) visit(root);
  return out;
}
