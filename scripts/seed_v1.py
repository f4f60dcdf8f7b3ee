import mxnet as mx
import numpy as np

from mxnet import nd
from mxnet import gluon
from mxnet import autograd

'''
BN_ReLU_CONV: 非线性单元
'''
def BN_ReLU_CONV(channels, kernel_size, strides=1, padding=0):
    basic = gluon.nn.HybridSequential()
    with basic.name_scope():
        basic.add(
            gluon.nn.BatchNorm(axis=1),
            gluon.nn.Activation('relu'),
            gluon.nn.Conv2D(channels, kernel_size=kernel_size, 
                            strides=strides, padding=padding)
        )
    return basic


'''
SparseUnit: Sparse单元
'''
class SparseUnit(gluon.HybridBlock):
    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        # bottleneck unit
        self.unit = gluon.nn.HybridSequential()
        self.unit.add(
            BN_ReLU_CONV(channels, kernel_size=1),
            BN_ReLU_CONV(channels, kernel_size=3, padding=1)
        )
            
    def hybrid_forward(self, F, X):
        return self.unit(X)

def exponential_index_fetch(x_list):
    count = len(x_list)
    i = 1
    inputs = []
    while i <= count:
        inputs.append(x_list[count - i])
        i *= 2
    return inputs

'''
SparseBlock: Sparse连接层
'''
class SparseBlock(gluon.HybridBlock):
    def __init__(self, layers, growth_rate, **kwargs):
        super().__init__(**kwargs)
        self.layers = layers
        net = self.net = gluon.nn.HybridSequential()
        for i in range(layers):
            net.add(SparseUnit(growth_rate))
        
    def hybrid_forward(self, F, X):
        X_list = [X]
        for i, blk in enumerate(self.net):
            X = blk(X)
            X_list.append(X)
            fetch_output = exponential_index_fetch(X_list)
            tmp = fetch_output[0]
            for out in fetch_output[1:]:
                tmp = F.concat(tmp, out, dim=1)
            X = tmp
        # print(X.shape)
        return X

'''
TransitionLayer: 过渡层
'''
def TransitionLayer(channels):
    layer = gluon.nn.HybridSequential()
    with layer.name_scope():
        layer.add(
            BN_ReLU_CONV(channels, kernel_size=1),
            gluon.nn.AvgPool2D(pool_size=2)
        )
    return layer

'''
num_classes: 类别数
num_sparseblk_count: 共有几个SparseBlock
num_layers: 每个SparseBlock的层数
growth_rate: 每个SparseBlock的输出通道数
init_channels: Init Conv Layer的初始通道数
verbose: 打印调试信息
'''
class SparseNet(gluon.HybridBlock):
    def __init__(self, num_classes, num_sparseblk_count, num_layers, growth_rate=12, 
                 init_channels=16, verbose=False, **kwargs):
        super().__init__(**kwargs)
        self.verbose = verbose
        net = self.net = gluon.nn.HybridSequential() # 整合之后的网络
        with self.name_scope(): 
            
            # Init Conv Layer
            b1 = gluon.nn.HybridSequential()
            b1.add(BN_ReLU_CONV(init_channels, kernel_size=3, padding=1))
            net.add(b1)
            
            # Sparse Connected Layer
            sparse_output_channel = init_channels
            for i in range(num_sparseblk_count):
                b2 = gluon.nn.HybridSequential()
                
                # Adding SparseBlock
                b2.add(SparseBlock(num_layers, growth_rate))
                
                # 统计sparsenet的输出通道数 用于给过渡层减半
                sparse_filter = [sparse_output_channel]
                for _ in range(num_layers):
                    sparse_filter.append(growth_rate)
                sparse_output_channel = sum(exponential_index_fetch(sparse_filter)) // 2
                
                #过渡层比SparseBlock层少一层 
                if i != num_sparseblk_count-1:
                    # Transition Layer 每次过渡层将输出通道减半
                    b2.add(TransitionLayer(sparse_output_channel))
                net.add(b2)
                    
            # Classification Layer
            b3 = gluon.nn.HybridSequential()
            b3.add(
                gluon.nn.GlobalAvgPool2D(),
                gluon.nn.Dense(num_classes)
            )
            net.add(b3)
            
    def hybrid_forward(self, F, X):
        out = X
        for i, blk in enumerate(self.net):
            out = blk(out)
            # if self.verbose:
                # print("blk %d : %s" % (i+1, out.shape))
        return out
