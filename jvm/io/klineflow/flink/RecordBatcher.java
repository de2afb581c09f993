package io.klineflow.flink;

import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;

import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.BoundedOneInput;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;

/**
 * Packs consecutive records of one subtask into one element, so the Python operator that
 * follows pays PyFlink's per-element cost once per batch instead of once per record.
 *
 * <p>A batch is the index of this subtask (4 bytes, big-endian: which source the records came
 * from, for {@link SourceWatermarks}), then the records' bytes, each preceded by its length (4
 * bytes, big-endian), in the order they arrived (Python: {@code udfs.batches.unpack_batch}). A
 * record is a {@code byte[]} (the Kafka source) or a {@code String} (tests' {@code
 * from_collection}), sent as UTF-8. When it opens, the operator sends one batch without
 * records: it announces the source before its first records. At the end of a bounded input
 * it sends one more without records whose source index has its top bit set: the source has
 * ended, and no longer holds the watermark back.
 *
 * <p>A batch is sent when it holds {@code maxRecords} records or {@code maxBytes} bytes, when
 * its first record has waited {@code maxDelayMs} (processing time), before every checkpoint
 * barrier and every watermark, and at the end of a bounded input. So nothing is ever held
 * across a checkpoint (the operator keeps no state) and records never overtake a watermark.
 */
public class RecordBatcher extends AbstractStreamOperator<byte[]>
        implements OneInputStreamOperator<Object, byte[]>, BoundedOneInput {

    private static final long serialVersionUID = 1L;
    /** Set in the source index of the batch that ends a bounded input. */
    public static final int END_OF_SOURCE = 0x80000000;

    private final int maxRecords;
    private final int maxBytes;
    private final long maxDelayMs;

    private transient ByteArrayOutputStream buffer;
    private transient int subtask;
    private transient int records;
    private transient long timerGeneration;
    private transient boolean timerPending;

    public RecordBatcher(int maxRecords, int maxBytes, long maxDelayMs) {
        if (maxRecords < 1 || maxBytes < 1 || maxDelayMs < 0) {
            throw new IllegalArgumentException(
                    "maxRecords and maxBytes must be >= 1 and maxDelayMs >= 0");
        }
        this.maxRecords = maxRecords;
        this.maxBytes = maxBytes;
        this.maxDelayMs = maxDelayMs;
    }

    @Override
    public void open() throws Exception {
        super.open();
        buffer = new ByteArrayOutputStream(Math.min(maxBytes, 1 << 16));
        subtask = getRuntimeContext().getTaskInfo().getIndexOfThisSubtask();
        startBatch(subtask);
        long now = getProcessingTimeService().getCurrentProcessingTime();
        getProcessingTimeService().registerTimer(now, timestamp -> announce());
    }

    private void announce() {
        if (records == 0) {
            output.collect(new StreamRecord<>(buffer.toByteArray()));
        }
    }

    /** Empty the buffer and write the header of the next batch. */
    private void startBatch(int header) {
        buffer.reset();
        writeInt(header);
    }

    private void writeInt(int value) {
        buffer.write(value >>> 24);
        buffer.write(value >>> 16);
        buffer.write(value >>> 8);
        buffer.write(value);
    }

    @Override
    public void processElement(StreamRecord<Object> element) throws Exception {
        Object value = element.getValue();
        byte[] bytes =
                value instanceof byte[]
                        ? (byte[]) value
                        : String.valueOf(value).getBytes(StandardCharsets.UTF_8);
        writeInt(bytes.length);
        buffer.write(bytes, 0, bytes.length);
        records++;
        if (records >= maxRecords || buffer.size() >= maxBytes || maxDelayMs == 0) {
            flush();
        } else if (!timerPending) {
            timerPending = true;
            long generation = timerGeneration;
            long due = getProcessingTimeService().getCurrentProcessingTime() + maxDelayMs;
            getProcessingTimeService()
                    .registerTimer(
                            due,
                            timestamp -> {
                                if (generation == timerGeneration) {
                                    flush();
                                }
                            });
        }
    }

    @Override
    public void processWatermark(Watermark mark) throws Exception {
        flush();
        super.processWatermark(mark);
    }

    @Override
    public void prepareSnapshotPreBarrier(long checkpointId) throws Exception {
        flush();
        super.prepareSnapshotPreBarrier(checkpointId);
    }

    @Override
    public void endInput() throws Exception {
        flush();
        startBatch(subtask | END_OF_SOURCE);
        output.collect(new StreamRecord<>(buffer.toByteArray()));
        startBatch(subtask);
    }

    @Override
    public void finish() throws Exception {
        flush();
        super.finish();
    }

    private void flush() {
        // A timer registered for the batch being sent must not cut the next one short.
        timerGeneration++;
        timerPending = false;
        if (records == 0) {
            return;
        }
        output.collect(new StreamRecord<>(buffer.toByteArray()));
        startBatch(subtask);
        records = 0;
    }
}
